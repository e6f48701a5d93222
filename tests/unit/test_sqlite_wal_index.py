"""The SQLite backend answers a repeated `latest_message_id` from memory while the
wal-index header says nothing was committed, and asks SQLite again as soon as any
connection, of this process or another, commits."""

from __future__ import annotations

import mmap
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

from flaskchat import RoomStore
from flaskchat.backends.sqlite import WAL_HEADER, WAL_INDEX_VERSION, SqliteBackend, WalIndex

PASSWORD = "correct horse battery"

POST_FROM_ANOTHER_PROCESS = """
import sys
from flaskchat import RoomStore
store = RoomStore.from_url(sys.argv[1], hash_method="scrypt:1024:8:1")
store.post_message(sys.argv[2], "alice", sys.argv[3], "from another process")
store.close()
"""


def alice_in_a_room(url: str) -> tuple[RoomStore, SqliteBackend, str, str]:
    """A store on `url` with a room in which alice is logged in."""
    store = RoomStore.from_url(url, hash_method="scrypt:1024:8:1")
    assert isinstance(store.backend, SqliteBackend)
    roomid = store.create_room("polled")
    store.register(roomid, "alice", PASSWORD)
    return store, store.backend, roomid, store.login(roomid, "alice", PASSWORD)


def queries_of(backend: SqliteBackend) -> list[str]:
    """Every statement the reading connection runs from now on."""
    seen: list[str] = []
    assert backend._reader is not None
    backend._reader.set_trace_callback(seen.append)
    return seen


def test_polls_ask_sqlite_again_only_after_a_commit_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    url = f"sqlite:///{path}"
    store, backend, roomid, token = alice_in_a_room(url)
    first = store.post_message(roomid, "alice", token, "one")
    assert backend.latest_message_id(roomid) == first.id
    assert store.conversation(roomid)[-1].endswith("<alice> one")  # lines now in memory
    assert backend._wal_index is not None
    queries = queries_of(backend)

    for _ in range(3):
        assert store.conversation(roomid)[-1].endswith("<alice> one")
    assert queries == []  # answered from memory

    second = store.post_message(roomid, "alice", token, "two")  # this process's writer
    assert store.conversation(roomid)[-1].endswith("<alice> two")
    assert backend.latest_message_id(roomid) == second.id
    assert len([q for q in queries if "MAX(id)" in q]) == 1
    queries.clear()

    subprocess.run(
        [sys.executable, "-c", POST_FROM_ANOTHER_PROCESS, url, roomid, token], check=True
    )
    assert store.conversation(roomid)[-1].endswith("<alice> from another process")
    assert len([q for q in queries if "MAX(id)" in q]) == 1
    queries.clear()

    with sqlite3.connect(path) as outside:  # a plain connection, as the sqlite3 shell
        outside.execute(
            "INSERT INTO messages (room_id, name_key, username, body, posted_at_us)"
            " VALUES (?, 'alice', 'alice', 'typed in the shell', 0)",
            (roomid,),
        )
    assert store.conversation(roomid)[-1].endswith("<alice> typed in the shell")
    assert [q for q in queries if "MAX(id)" in q]
    store.close()


def test_rooms_are_cached_apart(tmp_path: Path) -> None:
    store = RoomStore.from_url(f"sqlite:///{tmp_path / 'chat.sqlite3'}")
    quiet, busy = store.create_room("quiet"), store.create_room("busy")
    store.register(busy, "bob", PASSWORD)
    token = store.login(busy, "bob", PASSWORD)
    assert store.backend.latest_message_id(quiet) is None
    posted = store.post_message(busy, "bob", token, "hello")
    assert store.backend.latest_message_id(busy) == posted.id
    assert store.backend.latest_message_id(quiet) is None
    assert store.conversation(quiet) == []
    store.close()


def header(version: int = WAL_INDEX_VERSION, change: int = 7, init: int = 1) -> bytes:
    """A wal-index header as walformat.html lays it out (native byte order)."""
    fields = struct.pack("=IIIBBHII", version, 0, change, init, 0, 4096, 12, 3)
    return fields + bytes(WAL_HEADER - len(fields))


def index_over(content: bytes) -> WalIndex:
    view = mmap.mmap(-1, 2 * WAL_HEADER)
    view[:] = content
    return WalIndex(view)


def test_a_header_caught_mid_rewrite_or_unknown_is_not_trusted() -> None:
    assert index_over(header() * 2).header() == header()
    assert index_over(header() + header(change=8)).header() is None  # copies differ
    assert index_over(header(version=1) * 2).header() is None
    assert index_over(header(init=0) * 2).header() is None


def test_an_untrusted_header_means_asking_sqlite_every_time(tmp_path: Path) -> None:
    store, backend, roomid, token = alice_in_a_room(f"sqlite:///{tmp_path / 'chat.sqlite3'}")
    posted = store.post_message(roomid, "alice", token, "hi")
    backend.latest_message_id(roomid)
    backend._wal_index = index_over(header() + header(change=8))
    queries = queries_of(backend)
    for _ in range(3):
        assert backend.latest_message_id(roomid) == posted.id
    assert len([q for q in queries if "MAX(id)" in q]) == 3
    store.close()


def test_no_index_is_made_without_a_wal_index_file(tmp_path: Path) -> None:
    assert WalIndex.open(tmp_path / "missing.sqlite3") is None
    (tmp_path / "empty.sqlite3-shm").write_bytes(b"")
    assert WalIndex.open(tmp_path / "empty.sqlite3") is None
