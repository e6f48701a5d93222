"""Fan-out from one place: each room's events are read, encoded and framed once
per process, then written straight to every socket listening to the room.

Under gunicorn's gevent worker an event stream is a greenlet parked in the WSGI
response. Waking each of them for each message cost about 30 us of CPU per
delivered message at 1,000 streams (profile: switches, timers, four layers of
generators and gunicorn's chunked write, per stream). Here one feed per room
and process does the reading and writes the ready chunk to each socket with one
non-blocking `write`; a stream's own greenlet wakes only to finish a write that
the socket could not take at once (a slow client), and to end.

A stream starts as any other: its opening presence and the messages it missed
go out through gunicorn. Once it has caught up it joins its room's feed at the
same point of the room's log, and gunicorn sees nothing more until the stream
ends (it then sends the end of the chunked body). Where the server is not
gunicorn's gevent worker (the development server, the test client, threads),
`Fanout.stream` says so and the view serves the stream per listener
(`RoomStore.stream_items`).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .backends.base import GONE
from .errors import StoreUnavailable
from .live import HUNG_UP, gevent_patched, system_poll
from .presence import Presence, PresenceChange
from .store import RoomEvent, RoomStore, StreamItem, StreamStart

# How often each feed looks for clients that hung up (one poll of all its sockets).
HANGUP_CHECK = 2.0
# The least time between two presence changes sent to a room's streams: a room
# where hundreds arrive each second sends each stream a few changes a second.
PRESENCE_TICK = 0.25
# What a stream may have waiting beyond its socket's own buffer, and all streams
# of a process together; a stream past either is cut off (its client reconnects
# with Last-Event-ID and catches up from storage).
OUTLET_BYTES = 256 * 1024
QUEUED_BYTES = 32 * 1024 * 1024


def _order(message_id: str | None) -> tuple[int, ...]:
    """Ids of one room sort as numbers: "42" (memory, SQLite) or "1700000000000-3"
    (Redis); None is before every id."""
    return () if message_id is None else tuple(int(part) for part in message_id.split("-"))


def direct_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client's socket, if this request may be served from its room's feed:
    a GET under gunicorn's gevent worker (non-blocking sockets, one thread)."""
    connection = environ.get("gunicorn.socket")
    if connection is None or environ.get("REQUEST_METHOD") != "GET" or not gevent_patched():
        return None
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    try:
        if os.get_blocking(connection.fileno()):
            return None
    except OSError:
        return None
    return connection  # type: ignore[no-any-return]


@dataclass(eq=False, slots=True)
class Outlet:
    """One stream in its room's feed."""

    connection: socket.socket
    fd: int
    chunked: bool  # gunicorn frames an HTTP/1.1 body in chunks; 1.0 is sent as is
    shown: int  # the presence version this stream shows
    skip_to: tuple[int, ...] | None = None  # it already has the events up to this id
    pending: deque[bytes] = field(default_factory=deque)
    pending_bytes: int = 0
    draining: bool = False
    ended: bool = False
    room_gone: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False, slots=True)
class _Feed:
    roomid: str
    users: int = 0  # streams attached or on their way
    outlets: set[Outlet] = field(default_factory=set)
    cursor: str | None = None
    started: bool = False  # `cursor` holds the feed's place in the log
    shown: int = 0  # the presence version sent to the outlets
    presence_at: float = 0.0  # no presence change goes out before this time
    last_write: float = field(default_factory=time.monotonic)
    poller: Any = None


class Fanout:
    """The feeds of one app's rooms in this process. `encode` turns a stream
    item into its SSE record (`rooms.sse_record`)."""

    def __init__(self, store: RoomStore, encode: Callable[[StreamItem], str]) -> None:
        self.store = store
        self.encode = encode
        self._lock = threading.Lock()
        self._feeds: dict[str, _Feed] = {}
        self.queued_bytes = 0
        self._poll = system_poll()

    # A stream's own greenlet

    def stream(
        self, start: StreamStart, connection: socket.socket, keepalive: float, protocol: str
    ) -> Iterator[bytes]:
        """The body of one event stream served from its room's feed."""
        store, roomid = self.store, start.roomid
        feed = self._join(roomid, keepalive)
        outlet: Outlet | None = None
        try:
            with store.present(start) as present:
                shown, names = store.presence.current(roomid)
                yield b"retry: 2000\n" + self.encode(Presence(list(names))).encode()
                cursor = start.cursor
                while outlet is None:
                    items, cursor, more = store.read_after(roomid, cursor)
                    if items:
                        yield "".join(map(self.encode, items)).encode()
                        last = items[-1]
                        if isinstance(last, RoomEvent) and last.kind == GONE:
                            present.room_gone = True
                            return
                    if not more:
                        fd = connection.fileno()
                        candidate = Outlet(connection, fd, protocol == "HTTP/1.1", shown)
                        if self._attach(feed, candidate, cursor):
                            outlet = candidate
                while True:
                    outlet.wake.wait()
                    outlet.wake.clear()
                    self._drain(outlet)
                    if outlet.ended:
                        present.room_gone = outlet.room_gone
                        return
        finally:
            self._leave(feed, outlet)

    def _drain(self, outlet: Outlet) -> None:
        """Send what the feed could not write at once, blocking this greenlet only;
        the feed queues behind it meanwhile, so bytes never interleave."""
        outlet.draining = True
        try:
            while outlet.pending and not outlet.ended:
                data = outlet.pending.popleft()
                outlet.pending_bytes -= len(data)
                self.queued_bytes -= len(data)
                outlet.connection.sendall(data)
        except OSError:
            outlet.ended = True
        finally:
            outlet.draining = False
            if outlet.ended:
                self._forget(outlet)

    # Feeds

    def _join(self, roomid: str, keepalive: float) -> _Feed:
        with self._lock:
            feed = self._feeds.get(roomid)
            if feed is None:
                feed = self._feeds[roomid] = _Feed(roomid, users=1, poller=self._poll())
                threading.Thread(
                    target=self._run, args=(feed, keepalive), name="flaskchat-feed", daemon=True
                ).start()
            else:
                feed.users += 1
            return feed

    def _attach(self, feed: _Feed, outlet: Outlet, cursor: str | None) -> bool:
        """Add a stream that has read up to `cursor`. If the feed has already sent
        later events, the stream reads on first (False); if the feed is behind
        it, the stream skips what it already has."""
        if not feed.started:
            feed.cursor, feed.started = cursor, True
        here, there = _order(cursor), _order(feed.cursor)
        if here < there:
            return False
        if here > there:
            outlet.skip_to = here
        feed.outlets.add(outlet)
        feed.poller.register(outlet.fd, select.POLLIN | HUNG_UP)
        return True

    def _leave(self, feed: _Feed, outlet: Outlet | None) -> None:
        if outlet is not None:
            self._forget(outlet)
            if outlet in feed.outlets:
                feed.outlets.discard(outlet)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    feed.poller.unregister(outlet.fd)
        with self._lock:
            feed.users -= 1
            if feed.users <= 0 and self._feeds.get(feed.roomid) is feed:
                del self._feeds[feed.roomid]
        if feed.users <= 0:
            self.store.signals.notify(feed.roomid)  # the feed's thread sees it is done

    def _forget(self, outlet: Outlet) -> None:
        """Drop what a stream that ended still had queued."""
        self.queued_bytes -= outlet.pending_bytes
        outlet.pending.clear()
        outlet.pending_bytes = 0

    def _run(self, feed: _Feed, keepalive: float) -> None:
        """The feed's loop: read the room's new events once, send them to every
        stream; presence changes, keep-alives and hang-ups in between."""
        store, roomid = self.store, feed.roomid
        next_check = time.monotonic() + HANGUP_CHECK
        with store.signals.listening(roomid):
            generation = store.signals.generation(roomid)
            while feed.users > 0:
                if feed.started:
                    try:
                        self._send_events(feed, generation)
                    except StoreUnavailable:
                        time.sleep(1.0)  # the streams wait; the store may come back
                now = time.monotonic()
                store.presence.refresh(roomid)
                version = store.presence.current(roomid)[0]
                if version != feed.shown and now >= feed.presence_at:
                    self._send_presence(feed, version)
                    feed.presence_at = now + PRESENCE_TICK
                if now >= next_check:
                    self._hang_ups(feed)
                    next_check = now + HANGUP_CHECK
                if now - feed.last_write >= keepalive:
                    self._send(feed, b": keep-alive\n\n")
                wake_at = min(next_check, feed.last_write + keepalive)
                if version != feed.shown:
                    wake_at = min(wake_at, feed.presence_at)
                generation = store.signals.wait(roomid, generation, wake_at - time.monotonic())

    def _send_events(self, feed: _Feed, generation: int) -> None:
        more = True
        while more and feed.outlets:
            items, cursor, more = self.store.read_after(feed.roomid, feed.cursor, generation)
            for item in items:
                assert item is not None and not isinstance(item, Presence | PresenceChange)
                self._send(feed, self.encode(item).encode(), _order(item.id))
                if isinstance(item, RoomEvent) and item.kind == GONE:
                    for outlet in feed.outlets:
                        outlet.room_gone = True
                        self._end(outlet)
            feed.cursor = cursor
        if not feed.outlets:
            feed.started = False  # the next stream to attach sets the place

    def _send_presence(self, feed: _Feed, version: int) -> None:
        """One change for the streams that show the feed's last version (nearly
        all), worked out once; the others get theirs from the same log."""
        records: dict[int, bytes] = {}
        for outlet in list(feed.outlets):
            record = records.get(outlet.shown)
            if record is None:
                _, change = self.store.presence.since(feed.roomid, outlet.shown)
                record = records[outlet.shown] = b"" if change is None else self._frame_text(change)
            if record:
                self._write(feed, outlet, record if outlet.chunked else _unframe(record))
            outlet.shown = version
        feed.shown = version
        feed.last_write = time.monotonic()

    def _frame_text(self, item: PresenceChange | Presence) -> bytes:
        data = self.encode(item).encode()
        return b"%X\r\n%s\r\n" % (len(data), data)

    def _send(self, feed: _Feed, data: bytes, order: tuple[int, ...] | None = None) -> None:
        """Write one record to every stream of the feed: framed once, then one
        non-blocking write per socket. A record of the log (`order`: its id's)
        skips the streams that read it themselves."""
        chunk = b"%X\r\n%s\r\n" % (len(data), data)
        for outlet in list(feed.outlets):
            if outlet.skip_to is not None and order is not None:
                if order <= outlet.skip_to:
                    continue
                outlet.skip_to = None
            self._write(feed, outlet, chunk if outlet.chunked else data)
        feed.last_write = time.monotonic()

    def _write(self, feed: _Feed, outlet: Outlet, data: bytes) -> None:
        if outlet.ended:
            return
        if outlet.pending or outlet.draining:
            self._queue(outlet, data)
            return
        try:
            written = os.write(outlet.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._end(outlet)
            return
        if written < len(data):
            self._queue(outlet, data[written:])

    def _queue(self, outlet: Outlet, data: bytes) -> None:
        if (
            outlet.pending_bytes + len(data) > OUTLET_BYTES
            or self.queued_bytes + len(data) > QUEUED_BYTES
        ):
            # Cut off mid-chunk: the client sees a broken stream, not a clean end.
            with contextlib.suppress(OSError):
                outlet.connection.shutdown(socket.SHUT_RDWR)
            self._end(outlet)
            return
        outlet.pending.append(data)
        outlet.pending_bytes += len(data)
        self.queued_bytes += len(data)
        outlet.wake.set()

    def _end(self, outlet: Outlet) -> None:
        outlet.ended = True
        outlet.wake.set()

    def _hang_ups(self, feed: _Feed) -> None:
        """One poll of every socket of the feed: a client that closed its end is
        noticed within `HANGUP_CHECK` seconds, without waking the others."""
        ready = feed.poller.poll(0)
        if not ready:
            return
        by_fd = {outlet.fd: outlet for outlet in feed.outlets}
        for fd, events in ready:
            outlet = by_fd.get(fd)
            if outlet is None:
                continue
            if events & HUNG_UP:
                self._end(outlet)
                continue
            try:  # readable: the end of the stream, or bytes a client sent early
                if outlet.connection.recv(1, socket.MSG_PEEK) == b"":
                    self._end(outlet)
            except BlockingIOError:
                pass
            except OSError:
                self._end(outlet)


def _unframe(chunk: bytes) -> bytes:
    """The record inside a chunk, for a stream that is not chunked (HTTP/1.0)."""
    return chunk[chunk.index(b"\r\n") + 2 : -2]
