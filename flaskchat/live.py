"""Per-process wake-ups for the listeners of rooms, and running CPU-heavy calls
without freezing an event loop.

Written with `threading` only: under gunicorn's gevent worker the standard
library is monkey-patched, so the same locks and threads become greenlets.
"""

from __future__ import annotations

import os
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
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._conditions: dict[str, threading.Condition] = {}
        self._generations: Counter[str] = Counter()
        self._listeners: Counter[str] = Counter()
        self._watcher: threading.Thread | None = None

    def notify(self, roomid: str) -> None:
        with self._lock:
            self._generations[roomid] += 1
            condition = self._conditions.get(roomid)
            if condition is not None:
                condition.notify_all()

    def generation(self, roomid: str) -> int:
        with self._lock:
            return self._generations[roomid]

    @contextmanager
    def listening(self, roomid: str) -> Iterator[None]:
        """Keep the watcher running for `roomid` while the block runs."""
        with self._lock:
            self._listeners[roomid] += 1
            if roomid not in self._conditions:
                self._conditions[roomid] = threading.Condition(self._lock)
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
                    del self._conditions[roomid]

    def wait(self, roomid: str, seen: int, timeout: float) -> int:
        """Block until the room's generation differs from `seen` or `timeout` passes;
        must be called inside `listening(roomid)`."""
        with self._lock:
            condition = self._conditions[roomid]
            condition.wait_for(lambda: self._generations[roomid] != seen, max(timeout, 0))
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


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def run_cpu_bound(function: Callable[..., T], *args: object) -> T:
    """Call `function` in a real thread when gevent has patched this process, so a
    0.1 s scrypt hash does not stall every other connection of the worker."""
    if _gevent_patched():
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)  # type: ignore[no-any-return]
    return function(*args)


class BlockingCalls:
    """One real thread of its own for calls that wait on the disk, under gevent; a
    plain call otherwise. Its own thread, not the hub's pool, so that a queue of
    password hashes never holds it up. Made anew in each forked worker."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._pid = 0

    def run(self, function: Callable[..., T], *args: object) -> T:
        if not _gevent_patched():
            return function(*args)
        if self._pool is None or self._pid != os.getpid():
            from gevent.threadpool import ThreadPool

            self._pool, self._pid = ThreadPool(1), os.getpid()
        return self._pool.apply(function, args)  # type: ignore[no-any-return]
