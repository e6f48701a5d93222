"""What only the SQLite backend promises: durability settings, migrations, and
data that outlives the process that wrote it."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flaskchat import RoomStore, StoreUnavailable
from flaskchat.backends.sqlite import MIGRATIONS, SqliteBackend
from flaskchat.rules import new_roomid

from support import script_output

PASSWORD = "correct horse battery"
CHEAP_HASH = "pbkdf2:sha256:1"


def test_file_is_in_wal_mode_with_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    backend = SqliteBackend(path)
    backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"rooms", "users", "tokens", "messages"} <= tables


def test_connection_uses_full_sync_and_a_busy_timeout(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "chat.sqlite3")
    assert backend._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    assert backend._read(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) > 0
    assert backend.integrity_check() == "ok"
    backend.close()


def test_everything_survives_reopening_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    first = RoomStore.from_url(url)
    roomid = first.create_room("durable")
    first.register(roomid, "alice", PASSWORD)
    token = first.login(roomid, "alice", PASSWORD)
    first.post_message(roomid, "alice", token, "still here?")
    before = first.snapshot()
    first.close()

    second = RoomStore.from_url(url)
    assert second.snapshot() == before
    second.post_message(roomid, "alice", token, "yes")  # the old token still works
    assert second.login(roomid, "alice", PASSWORD)
    assert len(second.conversation(roomid)) == 2
    second.close()


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    one, two = RoomStore.from_url(url), RoomStore.from_url(url)
    roomid = one.create_room("shared")
    two.register(roomid, "alice", PASSWORD)
    token = one.login(roomid, "alice", PASSWORD)
    two.post_message(roomid, "alice", token, "written by two")
    assert one.conversation(roomid)[-1].endswith("<alice> written by two")
    one.close()
    two.close()


def test_relative_paths_land_in_the_instance_folder(tmp_path: Path) -> None:
    store = RoomStore.from_url("sqlite:///nested/chat.sqlite3", instance_path=tmp_path)
    store.create_room("where am I")
    store.close()
    assert (tmp_path / "nested" / "chat.sqlite3").is_file()


def test_a_newer_schema_is_migrated_forward_only(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    SqliteBackend(path).close()
    # Reopening an up-to-date file runs no migration (it would fail: tables exist).
    SqliteBackend(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_an_unreadable_file_makes_the_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable):
        SqliteBackend(path)


def test_an_older_file_is_migrated_forward_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    with sqlite3.connect(path) as conn:  # a file as the first release wrote it
        for step in MIGRATIONS[:1]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO rooms (id, alias) VALUES (?, 'old')", (new_roomid(),))
    conn.close()
    store = RoomStore.from_url(f"sqlite:///{path}")
    [roomid] = store.snapshot()
    store.register(roomid, "alice", PASSWORD)
    token = store.login(roomid, "alice", PASSWORD)
    store.post_message(roomid, "alice", token, "after the upgrade")
    assert store.alias(roomid) == "old"
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_writer_waits_for_another_process_holding_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store = RoomStore.from_url(f"sqlite:///{path}")
    roomid = store.create_room("busy")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    release = threading.Timer(0.3, other.execute, ("COMMIT",))
    release.start()
    started = time.monotonic()
    store.register(roomid, "alice", "correct horse battery")  # waits, then writes
    assert time.monotonic() - started >= 0.25
    assert set(store.snapshot()[roomid]["users"]) == {"alice"}
    release.join()
    other.close()
    store.close()


# Fifty posts at once from greenlets of one gevent process.
GEVENT_POSTS = """
from gevent import monkey

monkey.patch_all()
import json, sqlite3, sys

import gevent

from flaskchat import RoomStore

store = RoomStore.from_url("sqlite:///" + sys.argv[1], hash_method="scrypt:1024:8:1")
roomid = store.create_room("busy")
store.register(roomid, "alice", "correct horse battery")
token = store.login(roomid, "alice", "correct horse battery")
posts = [gevent.spawn(store.post_message, roomid, "alice", token, f"m{n}") for n in range(50)]
gevent.joinall(posts, raise_error=True)
with sqlite3.connect(sys.argv[1]) as conn:  # frames the WAL holds, before any close
    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
print(json.dumps({
    "ids": [int(post.value.id) for post in posts],
    "texts": [line.rsplit(" ", 1)[1] for line in store.conversation(roomid)],
    "frames": frames,
}))
"""


def posted_under_gevent(path: Path) -> dict[str, Any]:
    """Run GEVENT_POSTS: ids, texts in conversation order, and WAL frames written."""
    return script_output(GEVENT_POSTS, str(path))  # type: ignore[no-any-return]


def test_posts_from_many_greenlets_are_all_stored_once_in_order(tmp_path: Path) -> None:
    result = posted_under_gevent(tmp_path / "chat.sqlite3")
    assert len(set(result["ids"])) == 50
    by_id = [f"m{n}" for _, n in sorted(zip(result["ids"], range(50), strict=True))]
    assert result["texts"] == by_id


# What a worker meets when the file was not writable as it opened it: SQLite then
# opens it read-only without a word, and every write on that connection fails.
READ_ONLY = "PRAGMA query_only = ON"


def test_a_write_connection_that_cannot_write_is_opened_again(tmp_path: Path) -> None:
    store = RoomStore.from_url(f"sqlite:///{tmp_path / 'chat.sqlite3'}", hash_method=CHEAP_HASH)
    roomid = store.create_room("stuck")
    backend = store.backend
    assert isinstance(backend, SqliteBackend) and backend._conn is not None
    backend._conn.execute(READ_ONLY)
    with pytest.raises(StoreUnavailable):
        store.register(roomid, "alice", PASSWORD)
    store.register(roomid, "alice", PASSWORD)  # the next write opens a new connection
    assert set(store.snapshot()[roomid]["users"]) == {"alice"}
    store.close()


def test_a_full_database_answers_unavailable_then_writes_again(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store = RoomStore.from_url(f"sqlite:///{path}", hash_method=CHEAP_HASH)
    roomid = store.create_room("full")
    store.register(roomid, "alice", PASSWORD)
    token = store.login(roomid, "alice", PASSWORD)
    backend = store.backend
    assert isinstance(backend, SqliteBackend) and backend._conn is not None
    # SQLite's own size cap fails a write as a full disk does: "database or disk is full".
    pages = backend._conn.execute("PRAGMA page_count").fetchone()[0]
    backend._conn.execute(f"PRAGMA max_page_count = {pages}")
    acknowledged = []
    for n in range(50):
        try:
            store.post_message(roomid, "alice", token, f"{n:04} " + "x" * 1900)
        except StoreUnavailable:
            break
        acknowledged.append(n)
    else:
        pytest.fail("the file never filled up")
    store.post_message(roomid, "alice", token, "room" + "x" * 1900)  # a new connection
    texts = [m.text[:4] for m in store.messages(roomid, limit=200).messages]
    assert texts == [f"{n:04}" for n in acknowledged] + ["room"]
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_ping_commits_a_heartbeat_and_fails_when_writes_do(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    backend = SqliteBackend(path)

    def beat() -> int:
        with sqlite3.connect(path) as conn:
            value = int(conn.execute("SELECT beat_us FROM heartbeat").fetchone()[0])
        conn.close()
        return value

    backend.ping()
    first = beat()
    time.sleep(0.002)
    backend.ping()
    assert beat() > first
    assert backend._conn is not None
    backend._conn.execute(READ_ONLY)
    with pytest.raises(StoreUnavailable):
        backend.ping()
    backend.ping()  # opened again, and writing
    backend.close()
