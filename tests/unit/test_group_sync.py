"""Group commit on SQLite: a write is acknowledged once an fsync of the WAL that
began after its commit has finished, and the writers of every process on the
machine share those fsyncs through the `-sync` file beside the database."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import multiprocessing
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from flaskchat import RoomStore
from flaskchat.backends.base import UserRecord
from flaskchat.backends.sqlite import SqliteBackend
from flaskchat.rules import new_roomid

from support import script_output

PASSWORD = "correct horse battery"
CHEAP_HASH = "pbkdf2:sha256:1"
# How long a writer that must wait is watched to make sure it does (it would
# wait forever); generous, so that a loaded machine cannot fail a correct store.
STILL_WAITING = 0.3
FORK = multiprocessing.get_context("fork")


def sync_file(path: Path) -> Path:
    return path.with_name(path.name + "-sync")


def counters(path: Path) -> tuple[int, int]:
    """Fsyncs (started, completed), as the sync file beside `path` holds them."""
    started, completed = struct.unpack("=QQ", sync_file(path).read_bytes()[:16])
    return started, completed


def count_messages(path: Path) -> int:
    """Committed messages, as a connection of another process would see them."""
    with sqlite3.connect(path) as conn:
        count = int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    conn.close()
    return count


def open_room(path: Path) -> tuple[RoomStore, str, str]:
    """A store on `path` with one room where alice is logged in."""
    store = RoomStore.from_url(f"sqlite:///{path}", hash_method=CHEAP_HASH)
    roomid = store.create_room("synced")
    store.register(roomid, "alice", PASSWORD)
    return store, roomid, store.login(roomid, "alice", PASSWORD)


@contextmanager
def fsync_in_flight(fd: int) -> Iterator[None]:
    """Act as a process whose fsync began before anything the block commits: hold
    the flock on the sync file `fd` with `started` one ahead of `completed`, then
    finish that fsync and let go."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    started, completed = struct.unpack("=QQ", os.pread(fd, 16, 0))
    assert started == completed
    os.pwrite(fd, struct.pack("=Q", started + 1), 0)
    try:
        yield
    finally:
        os.pwrite(fd, struct.pack("=Q", started + 1), 8)
        fcntl.flock(fd, fcntl.LOCK_UN)


def open_files() -> list[str]:
    """What this process's file descriptors point at (Linux)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return links


class CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


CACHESTAT = 451  # Linux 6.5+, the same number on every architecture


def unsynced_pages(path: Path) -> int | None:
    """Pages of `path` in the page cache not yet on disk (dirty or being written),
    or None where the kernel cannot say (no `cachestat`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    whole = (ctypes.c_uint64 * 2)(0, 0)  # offset 0, length 0: to the end
    found = CacheStat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(CACHESTAT, fd, ctypes.byref(whole), ctypes.byref(found), 0) != 0:
            assert ctypes.get_errno() in {errno.ENOSYS, errno.EPERM}
            return None
    finally:
        os.close(fd)
    return int(found.dirty + found.writeback)


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_acknowledged_write_waits_for_a_shared_fsync(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store, roomid, token = open_room(path)
    before, _ = counters(path)
    store.post_message(roomid, "alice", token, "on disk")
    started, completed = counters(path)
    assert completed == started > before
    store.close()


def test_an_acknowledged_message_leaves_nothing_of_the_wal_unwritten(tmp_path: Path) -> None:
    """The WAL's pages are on disk when the post returns: with `synchronous =
    NORMAL` alone they would stay dirty in the page cache for seconds."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 8192)
    with probe.open("rb+") as f:
        os.fdatasync(f.fileno())
    if unsynced_pages(probe) != 0:
        pytest.skip("the kernel cannot tell which pages a sync wrote (cachestat, tmpfs)")
    path = tmp_path / "chat.sqlite3"
    store, roomid, token = open_room(path)
    store.post_message(roomid, "alice", token, "x" * 1000)
    assert unsynced_pages(path.with_name(path.name + "-wal")) == 0
    store.close()


def test_an_fsync_that_began_before_the_commit_does_not_count(tmp_path: Path) -> None:
    """The fsync in flight may have begun before the commit's frames were
    written: the writer waits for it to end, then runs one of its own."""
    path = tmp_path / "chat.sqlite3"
    store, roomid, token = open_room(path)
    fd = os.open(sync_file(path), os.O_RDWR)
    try:
        with fsync_in_flight(fd):
            in_flight, _ = counters(path)
            post = threading.Thread(
                target=store.post_message, args=(roomid, "alice", token, "after it")
            )
            post.start()
            post.join(STILL_WAITING)
            assert post.is_alive()  # committed, but not acknowledged
        post.join(30)
        assert not post.is_alive()
        assert counters(path) == (in_flight + 1, in_flight + 1)
    finally:
        os.close(fd)
    assert [m.text for m in store.messages(roomid).messages] == ["after it"]
    store.close()


def test_one_fsync_covers_every_writer_waiting_for_it(tmp_path: Path) -> None:
    """Five threads commit while another process's fsync runs; when it ends, the
    first of them runs the next fsync and the others find their commits in it."""
    path = tmp_path / "chat.sqlite3"
    store, roomid, token = open_room(path)
    fd = os.open(sync_file(path), os.O_RDWR)
    posts = [
        threading.Thread(target=store.post_message, args=(roomid, "alice", token, f"m{n}"))
        for n in range(5)
    ]
    try:
        with fsync_in_flight(fd):
            in_flight, _ = counters(path)
            for post in posts:
                post.start()
            wait_until(lambda: count_messages(path) == 5)  # all committed, none acknowledged
            assert all(post.is_alive() for post in posts)
        for post in posts:
            post.join(30)
        assert counters(path) == (in_flight + 1, in_flight + 1)
    finally:
        os.close(fd)
    store.close()


def post_in_child(
    store: RoomStore, roomid: str, token: str, texts: list[str], out: Connection
) -> None:
    """A forked worker: post `texts` in order with the store it inherited."""
    out.send([store.post_message(roomid, "alice", token, text).id for text in texts])
    out.close()


def test_writers_of_forked_processes_share_one_fsync(tmp_path: Path) -> None:
    """Each forked process opens the sync file anew: had it kept the parent's
    handle, the parent's flock would not hold it back. Two of them wait behind
    the parent's fsync and the next one covers both."""
    path = tmp_path / "chat.sqlite3"
    store, roomid, token = open_room(path)
    backend = store.backend
    assert isinstance(backend, SqliteBackend)
    children = []
    with fsync_in_flight(backend._sync._fd):
        in_flight, _ = counters(path)
        for name in ("a", "b"):
            receive, send = FORK.Pipe(duplex=False)
            child = FORK.Process(target=post_in_child, args=(store, roomid, token, [name], send))
            child.start()
            send.close()
            children.append((child, receive))
        wait_until(lambda: count_messages(path) == 2)
        time.sleep(STILL_WAITING)
        assert not any(receive.poll() for _, receive in children)
    ids = []
    for child, receive in children:
        assert receive.poll(30)
        ids += receive.recv()
        child.join(30)
        assert child.exitcode == 0
    assert counters(path) == (in_flight + 1, in_flight + 1)
    assert sorted(m.id for m in store.messages(roomid).messages) == sorted(ids)
    store.close()


def test_processes_posting_at_once_lose_nothing_and_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store, roomid, token = open_room(path)
    children = []
    for name in ("a", "b"):
        receive, send = FORK.Pipe(duplex=False)
        texts = [f"{name}{n:03}" for n in range(60)]
        child = FORK.Process(target=post_in_child, args=(store, roomid, token, texts, send))
        children.append((child, receive, texts))
    for child, _, _ in children:
        child.start()
    for child, receive, _ in children:
        assert receive.poll(60)
        ids = receive.recv()
        child.join(30)
        assert child.exitcode == 0
        assert [int(i) for i in ids] == sorted(int(i) for i in ids)  # in the order posted
    stored = {m.id: m.text for m in store.messages(roomid, limit=200).messages}
    assert sorted(stored.values()) == sorted(t for _, _, texts in children for t in texts)
    for _, _, texts in children:
        assert [stored[i] for i in sorted(stored, key=int) if stored[i] in texts] == texts
    started, completed = counters(path)
    assert completed == started
    store.close()


def test_the_sync_file_is_made_by_the_first_write_and_outlives_the_store(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    backend = SqliteBackend(path)
    assert not sync_file(path).exists()  # opening writes nothing anyone waits for
    backend.create_room(new_roomid(), "first")
    assert counters(path) == (1, 1)
    assert sync_file(path).stat().st_mode == path.stat().st_mode
    backend.close()
    assert not path.with_name(path.name + "-wal").exists()  # the last connection closed

    again = SqliteBackend(path)
    again.create_room(new_roomid(), "second")
    assert counters(path) == (2, 2)
    assert sync_file(path).stat().st_size == 16
    again.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a file for another user")
def test_a_sync_file_made_by_root_belongs_to_the_owner_of_the_database(tmp_path: Path) -> None:
    """A tool run as root (a backup, a check) must not leave the service's user a
    sync file it cannot open: every write would then fail."""
    path = tmp_path / "chat.sqlite3"
    backend = SqliteBackend(path)
    os.chown(path, 12345, 23456)
    path.chmod(0o640)
    backend.create_room(new_roomid(), "owned")
    made = sync_file(path).stat()
    assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (12345, 23456, 0o640)
    backend.close()


def test_a_new_wal_file_is_the_one_synced(tmp_path: Path) -> None:
    """When every connection closed, SQLite removed the WAL; the next write makes
    a new one, and no handle on the old file is kept to sync in its place."""
    path = tmp_path / "chat.sqlite3"
    backend = SqliteBackend(path)
    backend.create_room(new_roomid(), "before")  # the sync holds this WAL open
    assert backend._conn is not None and backend._reader is None  # nothing read yet
    backend._conn.close()  # as after a failed write, the process's only connection
    backend._conn = None
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists()
    backend.create_room(new_roomid(), "after")
    links = open_files()
    assert str(wal) in links
    assert not [link for link in links if link.endswith("-wal (deleted)")]
    backend.close()


@pytest.mark.parametrize("action", ["ban", "settings", "account"])
def test_owner_and_account_writes_wait_for_the_fsync_too(tmp_path: Path, action: str) -> None:
    path = tmp_path / "chat.sqlite3"
    backend = SqliteBackend(path)
    roomid = new_roomid()
    backend.create_room(roomid, "owned")
    before, _ = counters(path)
    if action == "ban":
        backend.set_ban(roomid, "bob", "Bob")
    elif action == "settings":
        backend.update_settings(roomid, registration_open=False)
    else:
        backend.add_user(roomid, "alice", UserRecord("alice", "not a real hash"), max_users=10)
    started, completed = counters(path)
    assert completed == started == before + 1
    backend.close()


# An app made before gevent patched `threading`, as gunicorn's master makes it with
# `--preload`, then twenty greenlets posting at once in the patched worker while
# another worker holds SQLite's write lock for a moment, then the flock of the
# sync file (its fsync is running) until every post has committed.
PRELOADED_POSTS = """
import fcntl, json, os, sqlite3, struct, sys

from flaskchat import RoomStore

path = sys.argv[1]
store = RoomStore.from_url("sqlite:///" + path, hash_method="pbkdf2:sha256:1")
roomid = store.create_room("preloaded")
store.register(roomid, "alice", "correct horse battery")
token = store.login(roomid, "alice", "correct horse battery")

from gevent import monkey

monkey.patch_all()
import gevent


def fsyncs():
    return struct.unpack("=QQ", open(path + "-sync", "rb").read(16))[1]


def committed():
    return other.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


other = sqlite3.connect(path, isolation_level=None)
other.execute("BEGIN IMMEDIATE")
sync_file = os.open(path + "-sync", os.O_RDWR)
fcntl.flock(sync_file, fcntl.LOCK_EX)
before = fsyncs()
posts = [gevent.spawn(store.post_message, roomid, "alice", token, f"m{n}") for n in range(20)]
gevent.sleep(0.2)
other.execute("COMMIT")
while committed() < 20 and not any(post.dead for post in posts):
    gevent.sleep(0.01)
acknowledged = sum(post.dead for post in posts)
fcntl.flock(sync_file, fcntl.LOCK_UN)
gevent.joinall(posts, raise_error=True)
print(json.dumps({
    "ids": sorted(int(post.value.id) for post in posts),
    "acknowledged_before": acknowledged,
    "fsyncs": fsyncs() - before,
}))
"""


def test_greenlets_of_a_preloaded_app_share_one_fsync_without_stalling(tmp_path: Path) -> None:
    """Locks made before the patch would block the worker's only thread while a
    greenlet holding them sleeps (waiting for SQLite's lock) or waits for the
    fsync thread: a hang, not an error. Posts that commit while another process
    fsyncs wait in the thread, and one fsync then covers all twenty."""
    path = tmp_path / "chat.sqlite3"
    assert script_output(PRELOADED_POSTS, str(path), timeout=30) == {
        "ids": list(range(1, 21)),
        "acknowledged_before": 0,
        "fsyncs": 1,
    }
    started, completed = counters(path)
    assert completed == started
