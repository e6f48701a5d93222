"""Per-process wake-ups for the listeners of rooms, and running CPU-heavy calls
without freezing an event loop.

Written with `threading` only: under gunicorn's gevent worker the standard
library is monkey-patched, so the same locks and threads become greenlets.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .backends import Backend
from .errors import StoreUnavailable

T = TypeVar("T")

# How long one call to `Backend.wait_for_messages` may block before the watcher
# looks again at which rooms still have listeners.
WATCH_TIMEOUT = 1.0


class RoomSignals:
    """A generation counter per room that listeners wait on.

    `notify` bumps a room's counter and wakes its listeners in this process. While
    any room has a listener, one watcher thread asks the backend for messages that
    other processes wrote, and notifies their rooms. All state sits behind `_lock`.

    Listeners wait on one `Event` per room, which `notify` sets and replaces: a
    wake-up costs each listener one switch, where a `Condition` made all of them
    take the shared lock again in turn (profile of fan-out to 1,000 streams).
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._generations: Counter[str] = Counter()
        self._listeners: Counter[str] = Counter()
        self._watcher: threading.Thread | None = None

    def notify(self, roomid: str) -> None:
        """Wake the room's listeners; a room without any has nothing to count."""
        with self._lock:
            if roomid not in self._listeners:
                return
            self._generations[roomid] += 1
            event = self._events.get(roomid)
            if event is not None:
                self._events[roomid] = threading.Event()
        if event is not None:
            event.set()

    def generation(self, roomid: str) -> int:
        with self._lock:
            return self._generations[roomid]

    @contextmanager
    def listening(self, roomid: str) -> Iterator[None]:
        """Keep the watcher running for `roomid` while the block runs."""
        with self._lock:
            self._listeners[roomid] += 1
            if roomid not in self._events:
                self._events[roomid] = threading.Event()
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(
                    target=self._watch, name="flaskchat-watcher", daemon=True
                )
                self._watcher.start()
        try:
            yield
        finally:
            with self._lock:
                self._listeners[roomid] -= 1
                if self._listeners[roomid] <= 0:
                    del self._listeners[roomid]
                    del self._events[roomid]
                    self._generations.pop(roomid, None)

    def wait(self, roomid: str, seen: int, timeout: float) -> int:
        """Block until the room's generation differs from `seen` or `timeout` passes;
        must be called inside `listening(roomid)`."""
        with self._lock:
            if self._generations[roomid] != seen:
                return self._generations[roomid]
            event = self._events[roomid]
        event.wait(max(timeout, 0))  # set by any notify after the check above
        with self._lock:
            return self._generations[roomid]

    def _watch(self) -> None:
        while True:
            with self._lock:
                rooms = list(self._listeners)
                if not rooms:
                    self._watcher = None
                    return
            try:
                changed = self._backend.wait_for_messages(rooms, WATCH_TIMEOUT)
            except StoreUnavailable:
                time.sleep(WATCH_TIMEOUT)
                continue
            for roomid in changed:
                self.notify(roomid)


def gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def system_poll() -> Callable[[], Any]:
    """The system's `select.poll`, even where gevent patched it: a zero-timeout
    poll never blocks, and gevent's goes through the event loop to say so."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")  # type: ignore[no-any-return]
    return select.poll


# What a poll reports once the other end has hung up (or the socket broke).
HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def hung_up(connection: socket.socket) -> Callable[[], bool]:
    """A check, cheap enough to run every few seconds, of whether the client at
    the other end of `connection` has closed it. A stream that only writes
    learns of a closed connection at its next write, which may be minutes away;
    this asks the kernel instead."""
    poll = system_poll()
    try:
        fd = connection.fileno()
    except OSError:
        return lambda: True

    def check() -> bool:
        poller = poll()
        poller.register(fd, select.POLLIN | HUNG_UP)
        ready = poller.poll(0)
        if not ready:
            return False
        if ready[0][1] & HUNG_UP:
            return True
        try:  # readable: the end of the stream, or bytes a client sent early
            return connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    return check


class ThreadCalls:
    """Calls run in real threads of a small pool of their own under gevent (a
    plain call otherwise), so they neither stall the event loop nor wait behind
    other kinds of work. Threads may run at a lower priority (a higher `nice`):
    Linux gives each thread its own. The pool is made anew in each forked worker."""

    def __init__(self, size: int, nice: int = 0) -> None:
        self._size = size
        self._nice = nice
        self._pool: Any = None
        self._pid = 0

    def run(self, function: Callable[..., T], *args: object) -> T:
        if not gevent_patched():
            return function(*args)
        if self._pool is None or self._pid != os.getpid():
            from gevent.threadpool import ThreadPool

            self._pool, self._pid = ThreadPool(self._size), os.getpid()
        if self._nice:
            return self._pool.apply(self._niced, (function, *args))  # type: ignore[no-any-return]
        return self._pool.apply(function, args)  # type: ignore[no-any-return]

    def _niced(self, function: Callable[..., T], *args: object) -> T:
        current = os.getpriority(os.PRIO_PROCESS, 0)  # 0: this thread, on Linux
        if current < self._nice:
            os.setpriority(os.PRIO_PROCESS, 0, self._nice)
        return function(*args)


# Password hashes (about 0.1 s of CPU each) yield the CPU to the event loop: a
# burst of logins slows other logins, not the delivery of messages (measured:
# fan-out p99 rose 1.65 x with 5 logins/s at the same priority).
_hashing = ThreadCalls(size=4, nice=10)


def run_cpu_bound(function: Callable[..., T], *args: object) -> T:
    """Call `function` in a real, low-priority thread when gevent has patched this
    process, so a 0.1 s scrypt hash does not stall the worker's connections."""
    return _hashing.run(function, *args)
