"""The one kind of in-process cache flaskchat keeps: bounded in bytes.

Clients choose what gets cached (which rooms they read, how long their
messages are), so a bound in entries alone lets them choose the memory too:
1,024 conversations of 50 long lines each came to 1.2 GB. Every cache here has
a budget in bytes, estimated with `sys.getsizeof`, and drops the entries used
least recently to stay within it.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# What one entry costs besides its value: the key (a room id or a tuple) and the
# ordered dict's node.
ENTRY_OVERHEAD = 200


class BoundedCache(Generic[K, V]):
    """A least-recently-used map that holds at most `max_bytes` by `size`'s
    estimate of each value (plus `ENTRY_OVERHEAD`). A value larger than the
    whole budget is not kept. All state sits behind `_lock`."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> None:
        cost = self._size(value) + ENTRY_OVERHEAD
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if cost > self.max_bytes:
                return
            self._entries[key] = (value, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def pop(self, key: K) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        """The estimated size of what the cache holds now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def size_of_strings(strings: Iterable[str]) -> int:
    """The memory the strings take, each counted apart."""
    return sum(sys.getsizeof(s) for s in strings)
