"""Who is online in each room, as one process sees it, at a cost that follows
changes rather than listeners x time.

Each process keeps, per room with listeners, the sorted list of names online,
a version number that moves when the list changes, and a short log of the
changes. A stream shows the whole list once, when it opens, and from then on
only what changed (`PresenceChange`), so a room where 5,000 people arrive does
not send each of them 5,000 whole lists. The process renews the presence of all
its streams in a room with one write every `PRESENCE_RENEW` seconds, and reads
the room's list from storage at most every `PRESENCE_CHECK` seconds (to see
other processes' streams and expiries), instead of each stream doing both.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .backends import Backend
from .errors import StoreUnavailable

# A listener stays "online" this long after its stream closes, so a reconnect
# does not flap; an open stream's presence is renewed well before it lapses.
PRESENCE_GRACE = 10.0
PRESENCE_LIFETIME = 45.0
PRESENCE_RENEW = 15.0
# How often a process reads a room's list from storage, where it can also change
# by expiry or through another process.
PRESENCE_CHECK = 2.0
# Names kept in each room's log of changes (each change holds at least one); a
# stream further behind than the log reaches is sent the whole list again. At
# hundreds of arrivals a second, a stream is a few hundred changes behind at each
# of its room's presence updates.
CHANGE_LOG_NAMES = 8192


@dataclass(frozen=True, slots=True)
class Presence:
    """Who has an open event stream in the room right now."""

    online: list[str]


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """Who came and who went since the list a stream showed last."""

    joined: list[str]
    left: list[str]


@dataclass(slots=True)
class _Room:
    listeners: int = 0
    version: int = 0
    names: tuple[str, ...] = ()
    streams: dict[str, tuple[str, str]] = field(default_factory=dict)  # stream: (name, session)
    log: deque[tuple[int, tuple[str, ...], tuple[str, ...]]] = field(default_factory=deque)
    logged_names: int = 0
    checked_at: float = -1e9
    renew_at: float = 0.0
    edits: int = 0  # local changes, so that a read that raced one is not trusted


class PresenceBook:
    """This process's view of presence in the rooms it has listeners in. Rooms
    appear with their first listener and go with their last, so the book holds
    no more rooms than there are open streams. `notify(roomid)` wakes a room's
    listeners after a change."""

    def __init__(self, backend: Backend, notify: Callable[[str], None]) -> None:
        self._backend = backend
        self._notify = notify
        self._lock = threading.Lock()
        self._rooms: dict[str, _Room] = {}

    # Listeners

    def open(self, roomid: str) -> None:
        """A stream of `roomid` begins (present or not): the room is watched."""
        with self._lock:
            room = self._rooms.get(roomid)
            if room is None:
                room = self._rooms[roomid] = _Room()
            room.listeners += 1
        if room.listeners == 1:
            self.refresh(roomid, force=True)

    def close(self, roomid: str) -> None:
        with self._lock:
            room = self._rooms.get(roomid)
            if room is not None:
                room.listeners -= 1
                if room.listeners <= 0:
                    del self._rooms[roomid]

    def join(self, roomid: str, stream: str, username: str, session: str) -> None:
        """Store the stream's presence (durably: other processes read it) and show
        the name here at once."""
        expires_at = time.time() + PRESENCE_LIFETIME
        self._backend.set_presence(roomid, stream, username, expires_at, session)
        with self._lock:
            room = self._rooms.get(roomid)
            if room is None:
                return
            room.streams[stream] = (username, session)
            room.edits += 1
            changed = self._apply(room, joined={username}, left=set())
        if changed:
            self._notify(roomid)

    def leave(self, roomid: str, stream: str, grace: bool) -> None:
        """The stream closed: its name stays online for the grace period (when
        `grace`, that is, its login still holds), then lapses by itself."""
        with self._lock:
            room = self._rooms.get(roomid)
            entry = None if room is None else room.streams.pop(stream, None)
        if entry is None:
            return
        if grace:
            expires_at = time.time() + PRESENCE_GRACE
            self._backend.set_presence(roomid, stream, entry[0], expires_at, entry[1])
        else:
            self.changed(roomid)

    def drop_session(self, roomid: str, session: str) -> None:
        """A logout: this process's streams of that login read on, unseen."""
        self._drop(roomid, lambda name, owner: owner == session)

    def drop_name(self, roomid: str, username: str) -> None:
        """A ban: every stream of the name reads on, unseen."""
        self._drop(roomid, lambda name, owner: name == username)

    def _drop(self, roomid: str, match: Callable[[str, str], bool]) -> None:
        with self._lock:
            room = self._rooms.get(roomid)
            if room is not None:
                for stream, (name, session) in list(room.streams.items()):
                    if match(name, session):
                        del room.streams[stream]
        self.changed(roomid)

    def changed(self, roomid: str) -> None:
        """Presence changed in storage (a logout, a ban): read it again now."""
        self.refresh(roomid, force=True)

    # Views

    def current(self, roomid: str) -> tuple[int, tuple[str, ...]]:
        """The room's version and sorted names, read from storage when due."""
        self.refresh(roomid)
        with self._lock:
            room = self._rooms.get(roomid)
            if room is None:
                return 0, tuple(self._backend.online(roomid, time.time()))
            return room.version, room.names

    def since(self, roomid: str, version: int) -> tuple[int, PresenceChange | Presence | None]:
        """What a stream that showed `version` should show now: nothing, the
        change since (from the log), or the whole list if the log is too short."""
        with self._lock:
            room = self._rooms.get(roomid)
            if room is None or room.version == version:
                return version, None
            if not room.log or room.log[0][0] > version + 1:
                return room.version, Presence(list(room.names))
            joined: set[str] = set()
            left: set[str] = set()
            for logged, came, went in room.log:
                if logged <= version:
                    continue
                for name in came:
                    if name in left:
                        left.discard(name)
                    else:
                        joined.add(name)
                for name in went:
                    if name in joined:
                        joined.discard(name)
                    else:
                        left.add(name)
            return room.version, PresenceChange(sorted(joined), sorted(left))

    def refresh(self, roomid: str, *, force: bool = False) -> None:
        """Read the room's list from storage if `PRESENCE_CHECK` has passed (or
        `force`), and renew this process's streams in one write when due."""
        now = time.monotonic()
        with self._lock:
            room = self._rooms.get(roomid)
            if room is None:
                return
            renew = now >= room.renew_at and bool(room.streams)
            if renew:
                room.renew_at = now + PRESENCE_RENEW
                streams = [(s, name, session) for s, (name, session) in room.streams.items()]
            if not force and now < room.checked_at + PRESENCE_CHECK:
                check = False
            else:
                check, room.checked_at, edits = True, now, room.edits
        try:
            if renew:
                self._backend.renew_presence(roomid, streams, time.time() + PRESENCE_LIFETIME)
            if not check:
                return
            names = set(self._backend.online(roomid, time.time()))
        except StoreUnavailable:
            return  # the presence lapses by itself if the store stays down
        with self._lock:
            room = self._rooms.get(roomid)
            if room is None or room.edits != edits:
                return  # a join came in during the read: read again next time
            current = set(room.names)
            changed = self._apply(room, joined=names - current, left=current - names)
        if changed:
            self._notify(roomid)

    @staticmethod
    def _apply(room: _Room, joined: set[str], left: set[str]) -> bool:
        """Change the list and log the change; the caller holds the lock."""
        joined = {name for name in joined if name not in room.names}
        if not joined and not left:
            return False
        names = [name for name in room.names if name not in left] if left else list(room.names)
        for name in joined:
            bisect.insort(names, name)
        room.names = tuple(names)
        room.version += 1
        room.log.append((room.version, tuple(joined), tuple(left)))
        room.logged_names += len(joined) + len(left)
        while room.logged_names > CHANGE_LOG_NAMES:
            _, came, went = room.log.popleft()
            room.logged_names -= len(came) + len(went)
        return True
