"""The SQLite backend answers a repeated `latest_message_id` from memory while the
wal-index header says nothing was committed, and asks SQLite again as soon as any
connection, of this process or another, commits."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from flaskchat import RoomStore
from flaskchat.backends import sqlite as sqlite_backend
from flaskchat.backends.sqlite import WAL_HEADER, WAL_INDEX_VERSION, SqliteBackend, WalIndex

PASSWORD = "correct horse battery"

POST_FROM_ANOTHER_PROCESS = """
import sys
from flaskchat import RoomStore
store = RoomStore.from_url(sys.argv[1], hash_method="scrypt:1024:8:1")
store.post_message(sys.argv[2], "alice", sys.argv[3], "from another process")
store.close()
"""


@pytest.fixture(autouse=True)
def own_descriptors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files read by other tests of this process do not count against the cap."""
    monkeypatch.setattr(sqlite_backend, "_SHM_FILES", {})


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
    assert len([q for q in queries if "MAX(seq)" in q]) == 1
    queries.clear()

    subprocess.run(
        [sys.executable, "-c", POST_FROM_ANOTHER_PROCESS, url, roomid, token], check=True
    )
    assert store.conversation(roomid)[-1].endswith("<alice> from another process")
    assert len([q for q in queries if "MAX(seq)" in q]) == 1
    queries.clear()

    with sqlite3.connect(path) as outside:  # a plain connection, as the sqlite3 shell
        outside.execute(
            "INSERT INTO messages (room_id, seq, name_key, username, body, posted_at_us)"
            " VALUES (?, 1000, 'alice', 'alice', 'typed in the shell', 0)",
            (roomid,),
        )
    assert store.conversation(roomid)[-1].endswith("<alice> typed in the shell")
    assert [q for q in queries if "MAX(seq)" in q]
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


def index_over(tmp_path: Path, content: bytes) -> WalIndex:
    file = tmp_path / f"{len(list(tmp_path.iterdir()))}.sqlite3-shm"
    file.write_bytes(content)
    return WalIndex(os.open(file, os.O_RDONLY))


def test_a_header_caught_mid_rewrite_or_unknown_is_not_trusted(tmp_path: Path) -> None:
    assert index_over(tmp_path, header() * 2).header() == header()
    assert index_over(tmp_path, header() + header(change=8)).header() is None  # copies differ
    assert index_over(tmp_path, header(version=1) * 2).header() is None
    assert index_over(tmp_path, header(init=0) * 2).header() is None
    assert index_over(tmp_path, header()).header() is None  # cut short


def test_an_untrusted_header_means_asking_sqlite_every_time(tmp_path: Path) -> None:
    store, backend, roomid, token = alice_in_a_room(f"sqlite:///{tmp_path / 'chat.sqlite3'}")
    posted = store.post_message(roomid, "alice", token, "hi")
    backend.latest_message_id(roomid)
    backend._wal_index = index_over(tmp_path, header() + header(change=8))
    queries = queries_of(backend)
    for _ in range(3):
        assert backend.latest_message_id(roomid) == posted.id
    assert len([q for q in queries if "MAX(seq)" in q]) == 3
    store.close()


def test_no_index_is_made_without_a_wal_index_file(tmp_path: Path) -> None:
    assert WalIndex.open(tmp_path / "missing.sqlite3") is None


def test_a_header_not_ready_when_opened_is_read_once_it_is(tmp_path: Path) -> None:
    """A header caught mid-write as the reader opens must not turn the shortcut
    off for the life of the process."""
    shm = tmp_path / "chat.sqlite3-shm"
    shm.write_bytes(b"")
    index = WalIndex.open(tmp_path / "chat.sqlite3")
    assert index is not None and index.header() is None
    with open(shm, "r+b") as file:  # written in place, as SQLite does
        file.write(header() + header(change=8))
    assert index.header() is None  # torn
    with open(shm, "r+b") as file:
        file.write(header() * 2)
    assert index.header() == header()


# Asks for the write lock on the byte every open SQLite connection read-locks in
# the `-shm` file (its "DMS" byte, offset 128) and prints whether it got it.
TRY_SQLITE_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    print("held")
else:
    print("free")
"""


def test_reading_the_header_keeps_sqlites_locks(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of a process's POSIX locks on
    it. If the index ever closed one, another process could take the -shm file
    from under this one's connections (and truncate it)."""
    path = tmp_path / "chat.sqlite3"
    store, backend, roomid, _token = alice_in_a_room(f"sqlite:///{path}")
    for _ in range(3):
        backend.latest_message_id(roomid)
        backend._reader = None  # reopen, and look at the -shm file again
        backend.latest_message_id(roomid)
        assert WalIndex.open(path) is not None
    probe = [sys.executable, "-c", TRY_SQLITE_LOCK, f"{path}-shm"]
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout == "held\n"
    store.close()


def test_a_replaced_file_is_read_anew_and_the_old_one_let_go(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    shm = tmp_path / "chat.sqlite3-shm"
    shm.write_bytes(header(change=1) * 2)
    first = WalIndex.open(path)
    assert first is not None and first.header() == header(change=1)
    shm.unlink()
    shm.write_bytes(header(change=2) * 2)
    again = WalIndex.open(path)
    assert again is not None and again.header() == header(change=2)
    assert os.path.samestat(os.fstat(sqlite_backend._SHM_FILES[str(shm)]), shm.stat())
    assert descriptors_to(f"{shm} (deleted)") == 0  # nothing of SQLite's was left on it


def descriptors_to(target: str) -> int:
    links = (os.path.join("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd"))
    return sum(1 for link in links if os.path.islink(link) and os.readlink(link) == target)


def test_past_the_cap_databases_are_asked_through_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "SHM_FILES_MAX", 1)
    for name in ("one", "two"):
        (tmp_path / f"{name}.sqlite3-shm").write_bytes(header() * 2)
    assert WalIndex.open(tmp_path / "one.sqlite3") is not None
    assert WalIndex.open(tmp_path / "two.sqlite3") is None
    assert WalIndex.open(tmp_path / "one.sqlite3") is not None  # already open
