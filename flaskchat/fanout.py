"""Fan-out from one place: each room's events are read and encoded once per
process, then written straight to every socket listening to the room.

Under gunicorn's gevent worker an event stream used to be a greenlet parked in
its WSGI response for as long as the page stayed open. Waking each of them for
each message cost about 30 us of CPU per delivered message at 1,000 streams
(profile: switches, timers, four layers of generators and gunicorn's chunked
write, per stream), and each parked greenlet with its request kept about 24 KB.

Here a stream is handed over: its request writes the response head, the opening
presence and what the client missed, then gives its connection to the room's
feed and returns gunicorn's `ALREADY_HANDLED`, so the request and its greenlet
are gone. The response is delimited by the connection's end (`Connection:
close`), so records go out as they are, without chunk framing. One feed per
room and process reads the room's log, and writes each record to every socket
with one non-blocking `write`; a socket that cannot take it all at once gets a
greenlet of its own until it has (a slow client). Where the server is not
gunicorn's gevent worker (the development server, the test client, threads),
the view serves streams per listener instead (`RoomStore.stream_items`).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backends.base import GONE
from .errors import StoreUnavailable
from .live import HUNG_UP, gevent_patched, system_poll
from .presence import Presence, PresenceChange
from .store import Message, PresentStream, RoomEvent, RoomStore, StreamItem, StreamStart

# How often each feed looks for clients that hung up (one poll of all its sockets).
HANGUP_CHECK = 2.0
# The least time between two presence changes sent to a room's streams: the first
# change after a quiet second goes out at once, and a room where hundreds arrive
# each second sends each stream one change a second.
PRESENCE_TICK = 1.0
# What a stream may have waiting beyond its socket's own buffer, and all streams
# of a process together; a stream past either is cut off (its client reconnects
# with Last-Event-ID and catches up from storage).
OUTLET_BYTES = 256 * 1024
QUEUED_BYTES = 32 * 1024 * 1024


def _order(message_id: str | None) -> tuple[int, ...]:
    """Ids of one room sort as numbers: "42" (memory, SQLite) or "1700000000000-3"
    (Redis); None is before every id."""
    return () if message_id is None else tuple(int(part) for part in message_id.split("-"))


def can_hand_over(environ: dict[str, Any]) -> bool:
    """Whether this request's connection may be handed to its room's feed: a GET
    under gunicorn's gevent worker (non-blocking sockets, one thread)."""
    connection = environ.get("gunicorn.socket")
    if connection is None or environ.get("REQUEST_METHOD") != "GET" or not gevent_patched():
        return False
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.0", "HTTP/1.1"):
        return False
    try:
        return not os.get_blocking(connection.fileno())
    except OSError:
        return False


@dataclass(eq=False, slots=True)
class Outlet:
    """One stream in its room's feed; it owns its copy of the connection."""

    connection: socket.socket
    fd: int
    start: StreamStart
    present: PresentStream
    on_close: Callable[[], object]
    shown: int  # the presence version this stream shows
    peer: str  # the client's address, whose connections this one still counts in
    skip_to: tuple[int, ...] | None = None  # it already has the events up to this id
    pending: list[bytes] | None = None  # what the socket could not take yet
    pending_bytes: int = 0
    draining: bool = False
    ended: bool = False
    cut: bool = False  # ended without sending what is pending


@dataclass(eq=False, slots=True)
class _Feed:
    roomid: str
    keepalive: float
    users: int = 1  # streams attached or on their way
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
        # Connections handed over, per client address: gunicorn has let go of
        # them, and the worker's cap on connections per address counts them here.
        self.held: Counter[str] = Counter()

    # The request's greenlet

    def hand_over(
        self,
        start: StreamStart,
        environ: dict[str, Any],
        status: str,
        headers: list[tuple[str, str]],
        keepalive: float,
        on_close: Callable[[], object],
    ) -> object:
        """Send the head and the catch-up of one stream, then hand its connection
        to the room's feed; returns what tells gunicorn the response is done."""
        from gunicorn.workers.base_async import ALREADY_HANDLED  # type: ignore[import-untyped]

        store, roomid = self.store, start.roomid
        connection: socket.socket = environ["gunicorn.socket"]
        head = [f"{environ['SERVER_PROTOCOL']} {status}"]
        head += [f"{name}: {value}" for name, value in headers]
        head.append("Connection: close")  # the body ends with the connection
        try:
            present = store.open_presence(start)
        except StoreUnavailable:  # the stream works, unseen, until the client reconnects
            present = store.open_presence(StreamStart(roomid, start.cursor, None, ""))
        feed = self._join(roomid, keepalive)
        outlet: Outlet | None = None
        try:
            shown, names = store.presence.current(roomid)
            opening = "\r\n".join(head) + "\r\n\r\nretry: 2000\n"
            presence = self.encode(Presence(list(names)))
            connection.sendall(opening.encode("latin-1") + presence.encode())
            cursor = start.cursor
            while outlet is None:
                items, cursor, more = store.read_after(roomid, cursor)
                if items:
                    connection.sendall("".join(map(self.encode, items)).encode())
                    last = items[-1]
                    if isinstance(last, RoomEvent) and last.kind == GONE:
                        present.room_gone = True
                        break
                if not more:
                    peer = connection.getpeername()[0]
                    copy = connection.dup()  # stays open when gunicorn closes its own
                    candidate = Outlet(copy, copy.fileno(), start, present, on_close, shown, peer)
                    if self._attach(feed, candidate, cursor):
                        outlet = candidate
                        self.held[peer] += 1
                    else:
                        copy.close()
        except (OSError, StoreUnavailable):
            pass  # the client went, or the store: it reconnects and catches up
        finally:
            if outlet is None:
                self._finish(feed, start, present, on_close)
        return ALREADY_HANDLED

    # Feeds

    def _join(self, roomid: str, keepalive: float) -> _Feed:
        with self._lock:
            feed = self._feeds.get(roomid)
            if feed is None:
                feed = self._feeds[roomid] = _Feed(roomid, keepalive, poller=self._poll())
                threading.Thread(
                    target=self._run, args=(feed,), name="flaskchat-feed", daemon=True
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
        # A change the feed sent while this stream was catching up.
        version, change = self.store.presence.since(feed.roomid, outlet.shown)
        if change is not None:
            self._write(feed, outlet, self._record(change))
        outlet.shown = version
        return True

    def _finish(
        self,
        feed: _Feed,
        start: StreamStart,
        present: PresentStream,
        on_close: Callable[[], object],
    ) -> None:
        """A stream has ended: its presence starts its grace period (if its login
        still holds), and the view's close callbacks run."""
        store = self.store
        try:
            store.close_presence(start, present)
        finally:
            on_close()
            with self._lock:
                feed.users -= 1
                if feed.users <= 0 and self._feeds.get(feed.roomid) is feed:
                    del self._feeds[feed.roomid]
            if feed.users <= 0:
                store.signals.notify(feed.roomid)  # the feed's thread sees it is done

    def _run(self, feed: _Feed) -> None:
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
                version = store.presence.current(roomid)[0]  # read from storage when due
                if version != feed.shown and now >= feed.presence_at:
                    self._send_presence(feed, version)
                    feed.presence_at = now + PRESENCE_TICK
                if now >= next_check:
                    self._hang_ups(feed)
                    next_check = now + HANGUP_CHECK
                if now - feed.last_write >= feed.keepalive:
                    self._send(feed, b": keep-alive\n\n")
                wake_at = min(next_check, feed.last_write + feed.keepalive)
                if version != feed.shown:
                    wake_at = min(wake_at, feed.presence_at)
                generation = store.signals.wait(roomid, generation, wake_at - time.monotonic())

    def _send_events(self, feed: _Feed, generation: int) -> None:
        more = True
        while more and feed.outlets:
            items, cursor, more = self.store.read_after(feed.roomid, feed.cursor, generation)
            for item in items:
                order = _order(item.id) if isinstance(item, Message | RoomEvent) else None
                self._send(feed, self.encode(item).encode(), order)
                if isinstance(item, RoomEvent) and item.kind == GONE:
                    for outlet in list(feed.outlets):
                        outlet.present.room_gone = True
                        self._end(feed, outlet)
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
                record = records[outlet.shown] = self._record(change)
            if record:
                self._write(feed, outlet, record)
            outlet.shown = version
        feed.shown = version
        feed.last_write = time.monotonic()

    def _record(self, item: PresenceChange | Presence | None) -> bytes:
        return b"" if item is None else self.encode(item).encode()

    def _send(self, feed: _Feed, data: bytes, order: tuple[int, ...] | None = None) -> None:
        """Write one record to every stream of the feed, one non-blocking write per
        socket. A record of the log (`order`: its id's) skips the streams that
        read it themselves."""
        for outlet in list(feed.outlets):
            if outlet.skip_to is not None and order is not None:
                if order <= outlet.skip_to:
                    continue
                outlet.skip_to = None
            self._write(feed, outlet, data)
        feed.last_write = time.monotonic()

    def _write(self, feed: _Feed, outlet: Outlet, data: bytes) -> None:
        if outlet.pending is not None:
            self._queue(feed, outlet, data)
            return
        try:
            written = os.write(outlet.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._end(feed, outlet)
            return
        if written < len(data):
            self._queue(feed, outlet, data[written:])

    def _queue(self, feed: _Feed, outlet: Outlet, data: bytes) -> None:
        size = len(data)
        if outlet.pending_bytes + size > OUTLET_BYTES or self.queued_bytes + size > QUEUED_BYTES:
            outlet.cut = True
            with contextlib.suppress(OSError):  # also wakes a drain blocked on the socket
                outlet.connection.shutdown(socket.SHUT_RDWR)
            self._end(feed, outlet)
            return
        if outlet.pending is None:
            outlet.pending = []
        outlet.pending.append(data)
        outlet.pending_bytes += size
        self.queued_bytes += size
        if not outlet.draining:
            outlet.draining = True
            threading.Thread(target=self._drain, args=(feed, outlet), daemon=True).start()

    def _drain(self, feed: _Feed, outlet: Outlet) -> None:
        """Send what the socket could not take at once, in a greenlet of its own;
        the feed queues behind it meanwhile, so records never interleave."""
        try:
            while outlet.pending and not outlet.cut:
                data = outlet.pending.pop(0)
                outlet.pending_bytes -= len(data)
                self.queued_bytes -= len(data)
                outlet.connection.sendall(data)
                if not outlet.pending:
                    outlet.pending = None  # back to writing straight from the feed
        except OSError:
            outlet.cut = True
            self._end(feed, outlet)
        finally:
            outlet.draining = False
            if outlet.ended:
                self._close(feed, outlet)

    def _end(self, feed: _Feed, outlet: Outlet) -> None:
        """Take a stream out of the feed; it closes once what it has pending is
        sent (at once if it was cut off)."""
        if outlet.ended:
            return
        outlet.ended = True
        feed.outlets.discard(outlet)
        with contextlib.suppress(KeyError, ValueError, OSError):
            feed.poller.unregister(outlet.fd)
        if not outlet.draining:
            threading.Thread(target=self._close, args=(feed, outlet), daemon=True).start()

    def _close(self, feed: _Feed, outlet: Outlet) -> None:
        self.held[outlet.peer] -= 1
        if self.held[outlet.peer] <= 0:
            del self.held[outlet.peer]
        if outlet.pending is not None:
            self.queued_bytes -= outlet.pending_bytes
            outlet.pending, outlet.pending_bytes = None, 0
        with contextlib.suppress(OSError):
            if outlet.cut:  # the client sees a broken stream, not a clean end
                outlet.connection.shutdown(socket.SHUT_RDWR)
            outlet.connection.close()
        self._finish(feed, outlet.start, outlet.present, outlet.on_close)

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
                self._end(feed, outlet)
                continue
            try:  # readable: the end of the stream, or bytes a client sent early
                if os.read(fd, 4096) == b"":
                    self._end(feed, outlet)
            except BlockingIOError:
                pass
            except OSError:
                self._end(feed, outlet)
