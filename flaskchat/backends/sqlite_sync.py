"""Group commit for the SQLite writers of one machine: one `fdatasync` of the WAL
makes the commits of every process that waits for it durable.

The writing connections commit with `synchronous = NORMAL`, so a COMMIT only
writes its frames to the `-wal` file and the write lock is held for those
writes alone; `SharedSync.wait` then returns once an fsync that began after the
commit has finished. The processes share two counters in a small file beside the
database (`<db>-sync`): fsyncs started and fsyncs completed. A writer reads
`started` after its commit; the fsync numbered one more began after that read,
hence after the commit, so once `completed` reaches it the commit is on disk. To
get there the writer takes an `flock` on the file and, unless another process
did it meanwhile, runs the next fsync itself. Every process that committed
during one fsync is served by the next: one fsync per round, not per commit.
Readers may see a commit a moment before it is on disk; only the writer's own
answer waits for it. Under gevent, a wait behind another process's fsync, or
on a slow disk, runs in a real thread (see `SLOW_SYNC`), so the worker goes on
serving meanwhile. SQLite itself still syncs the WAL before a checkpoint copies
it into the database, and the database after.

The counters are aligned 8-byte words, each read and written whole; they are
written only under the flock. Read without it, `completed` may be stale, which
costs one more wait, never a missed fsync; `started` is read after the commit's
own `write()` and stored before the fsync's, and the kernel orders both through
the locks of the pages they touch, so a fsync that the read did not see covers
the commit. A writer that runs the fsync itself is durable whatever the
counters say, and processes that share no file (another path to the database)
each stay correct on their own, only without sharing.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import stat
import threading
import time
from pathlib import Path

from ..live import ThreadCalls

STARTED, COMPLETED = 0, 1
SIZE = 16  # two unsigned 8-byte counters
# An fsync that takes less than this (on average) runs in the waiting greenlet
# when no other process holds the flock: handing it to a thread costs a gevent
# worker more than a fast disk's fsync (measured with 0.1 ms fsyncs: 10 % fewer
# posts per second with one worker, 5-9 % with two). A slower disk, or another
# process's fsync in progress, is waited for in the thread.
SLOW_SYNC = 0.001


class PatchAwareLock:
    """A `threading.Lock` made again once gevent has patched `threading`. An app
    preloaded in gunicorn's master makes its locks before the gevent worker
    patches, and a greenlet waiting on such a lock for one that sleeps or waits
    for a thread stops the whole worker for good."""

    def __init__(self) -> None:
        self._factory = threading.Lock
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        if self._factory is not threading.Lock:  # patched since: never while held
            self._factory = threading.Lock
            self._lock = threading.Lock()
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class SharedSync:
    """The sync file of one database, mapped in each process on first use and
    again after a fork (an inherited flock would be shared with the parent
    instead of excluding it)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + "-sync")
        self.wal_path = database.with_name(database.name + "-wal")
        self._pid = 0
        # Waiters of this process take turns here (one of them in a real thread,
        # under gevent): those behind the first find their commit already synced.
        self._lock = PatchAwareLock()
        self._thread = ThreadCalls(size=1)
        self._sync_seconds = 0.0  # a moving average of fdatasync's time
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._counters: memoryview | None = None
        self._wal = -1  # the `-wal` file, opened by the fsync thread
        self._new_wal = True  # opened again (and its folder synced) at the next fsync

    def wait(self) -> None:
        """Return once every commit this process made before the call is on disk.
        Raises `OSError` when the file cannot be opened or synced."""
        counters = self._counters
        if counters is None or self._pid != os.getpid():
            with self._lock:
                counters = self._open()
        target = counters[STARTED] + 1
        if counters[COMPLETED] >= target:
            return
        with self._lock:
            if counters[COMPLETED] >= target:
                return
            if self._sync_seconds < SLOW_SYNC and self._sync(counters, target, block=False):
                return
            self._thread.run(self._sync, counters, target, True)

    def connected(self) -> None:
        """Say that this process opened a connection to the database, which may
        have made a new WAL file: SQLite removes it only when the last connection
        closes, so until this process reconnects, the file it holds open is the
        one its commits go to."""
        self._new_wal = True

    def _open(self) -> memoryview:
        """The counters, mapped on first use in each process. Caller holds `_lock`."""
        if self._counters is not None and self._pid == os.getpid():
            return self._counters
        self._forget()
        owner = os.stat(self.database)
        mode = stat.S_IMODE(owner.st_mode)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            size = os.fstat(fd).st_size
            if size < SIZE:  # new: grown once, never shrunk (others may map it)
                if size == 0:  # as SQLite makes `-wal` and `-shm`: the database's
                    os.fchmod(fd, mode)  # mode, not the umask's, and when made by
                    if os.geteuid() == 0:  # root (a tool), the database's owner
                        os.fchown(fd, owner.st_uid, owner.st_gid)
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()
        self._counters = memoryview(self._map).cast("Q")
        return self._counters

    def _sync(self, counters: memoryview, target: int, block: bool) -> bool:
        """Under the flock, run the next fsync unless one numbered `target` or
        later has ended meanwhile. False if `block` is not set and another
        process holds the flock."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if counters[COMPLETED] >= target:
                return True
            number = counters[STARTED] + 1
            counters[STARTED] = number
            started = time.perf_counter()
            self._sync_wal()
            took = time.perf_counter() - started
            counters[COMPLETED] = number
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._sync_seconds += (took - self._sync_seconds) / 8
        return True

    def _sync_wal(self) -> None:
        """fdatasync the `-wal` file, opened again after `connected` with its
        directory entry synced once (as SQLite's first sync of a WAL does). It is
        neither stat'ed nor closed at each fsync: asking for a file's attributes
        (gevent's `os.close` does) made the next fdatasync of it half as slow
        again (ext4: 150 µs instead of 100, as it then writes the inode too)."""
        if self._new_wal or self._wal < 0:
            self._new_wal = False  # first: a connection opened meanwhile sets it again
            self._close_wal()
            try:
                self._wal = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # checkpointed into the database, then removed
                return
            folder = os.open(self.wal_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        os.fdatasync(self._wal)

    def _close_wal(self) -> None:
        if self._wal >= 0:
            with contextlib.suppress(OSError):
                os.close(self._wal)
            self._wal = -1

    def _forget(self) -> None:
        """Let go of this process's handles (or of those inherited from a parent)."""
        if self._counters is not None:
            self._counters.release()
        if self._map is not None:
            self._map.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._close_wal()
        self._counters, self._map, self._fd = None, None, -1

    def close(self) -> None:
        with self._lock:
            self._forget()
