"""Event streams served from their room's feed (`flaskchat.fanout`) under real
gunicorn with the shipped config (one gevent worker): every stream gets every
record once, in order and correctly framed, however it joins the feed; a client
that does not read is cut off without holding up the others; HTTP/1.0 streams
get unframed bytes; hang-ups are noticed; an open stream stays one of its
address's connections; presence converges; a deleted room ends every stream
at once."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from support import Event, EventStream, Service, call, gunicorn_service

pytestmark = pytest.mark.system

SHIPPED = ("-c", "python:flaskchat.gunicorn_config")
PASSWORD = "correct horse battery"
# Generous for a loaded two-core machine: a missing record fails the test
# within this many seconds instead of hanging it.
READ_TIMEOUT = 10.0
CHUNK_SIZE_LINE = re.compile(rb"[0-9A-Fa-f]+")


@contextlib.contextmanager
def serving(tmp_path: Path, store_url: str, *options: str, **env: str) -> Iterator[Service]:
    """gunicorn with the shipped config and one worker (one process: every stream
    of a room shares one feed), cheap password hashes, and stream caps well above
    what these tests open unless `env` says otherwise."""
    environment = {
        "FLASKCHAT_PASSWORD_HASH_METHOD": "pbkdf2:sha256:1",
        "FLASKCHAT_MAX_STREAMS_PER_IP": "200",
        "FLASKCHAT_MAX_CONNECTIONS_PER_IP": "400",
        **env,
    }
    options = (*SHIPPED, "--graceful-timeout", "2", *options)
    log = tmp_path / "gunicorn.log"
    service = gunicorn_service(store_url, log, *options, workers=1, env=environment).start()
    try:
        yield service
    finally:
        service.stop(signal.SIGINT)  # quick: a graceful stop waits for open streams
    # The feed serves streams only under this worker; anything else is not the test.
    assert "Using worker: flaskchat.worker.GeventWorker" in service.logs()


@pytest.fixture
def server(tmp_path: Path, store_url: str) -> Iterator[Service]:
    """The shipped config on SQLite and on Redis, with default settings otherwise."""
    with serving(tmp_path, store_url) as service:
        yield service


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Closes what a test opened (streams first, then its server), however it ends."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """For tests of sockets and framing, where the store makes no difference."""
    return f"sqlite:///{tmp_path / 'chat.sqlite3'}"


class Room:
    """A room on a running server, with members who post as a seed client does."""

    def __init__(self, server: Service, alias: str = "fan-out") -> None:
        self.server = server
        status, reply = call(server.url, "/createroom", {"alias": alias})
        assert status == 200, reply
        self.roomid = str(reply["roomid"])
        self.owner_key = str(reply["owner_key"])
        self.tokens: dict[str, str] = {}

    def join(self, username: str) -> str:
        base, roomid = self.server.url, self.roomid
        credentials = {"username": username, "password": PASSWORD}
        status, reply = call(base, f"/{roomid}/register", credentials)
        assert status == 200, reply
        status, reply = call(base, f"/{roomid}/login", credentials)
        assert status == 200, reply
        self.tokens[username] = str(reply["token"])
        return self.tokens[username]

    def say(self, username: str, text: str, source: str = "127.0.0.1") -> str:
        """Post a message (from `source`, another client's address if need be)."""
        body = {"username": username, "token": self.tokens[username], "message": text}
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.server.port, timeout=READ_TIMEOUT, source_address=(source, 0)
        )
        with contextlib.closing(connection):
            headers = {"Content-Type": "application/json"}
            connection.request("POST", f"/{self.roomid}/message", json.dumps(body), headers)
            response = connection.getresponse()
            reply = json.loads(response.read())
        assert response.status == 200, reply
        return str(reply["id"])

    def ticket(self, username: str) -> str:
        body = {"username": username, "token": self.tokens[username]}
        status, reply = call(self.server.url, f"/{self.roomid}/ticket", body)
        assert status == 200, reply
        return str(reply["ticket"])

    def logout(self, username: str) -> None:
        body = {"username": username, "token": self.tokens[username]}
        status, reply = call(self.server.url, f"/{self.roomid}/logout", body)
        assert status == 200, reply

    def events_path(self, query: str = "") -> str:
        return f"/{self.roomid}/events" + (f"?{query}" if query else "")


class RawStream:
    """An event stream over a bare socket whose HTTP framing is checked byte by
    byte: a chunked body's every size line is hex digits alone and every chunk
    is followed by CRLF, up to the last chunk; a body without framing (HTTP/1.0,
    or `Connection: close`) must hold SSE lines and nothing else."""

    def __init__(
        self,
        port: int,
        path: str,
        *,
        version: str = "HTTP/1.1",
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
        receive_buffer: int | None = None,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:  # before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} {version}", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.closes = version == "HTTP/1.0" or "close" in (headers or {}).values()
        self._raw = b""  # received, not yet taken apart
        self.body = b""  # the body's records, not yet parsed
        self.finished = False  # the last chunk (or, unframed, the end) arrived
        self.online: list[str] | None = None
        head = self._take_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status_line = status_line
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.first_record: str | None = None
        if self.status == 200:
            # A body of unknown length is chunked, or ends with the connection
            # (which HTTP/1.1 must announce); it never states a length.
            assert "content-length" not in self.headers, self.headers
            if not self.chunked and version == "HTTP/1.1":
                assert self.headers.get("connection", "").lower() == "close", self.headers

    def _receive(self) -> None:
        piece = self.sock.recv(65536)
        if not piece:
            raise EOFError("the connection ended")
        self._raw += piece

    def _take_until(self, marker: bytes) -> bytes:
        while marker not in self._raw:
            self._receive()
        taken, _, self._raw = self._raw.partition(marker)
        return taken

    def _take(self, size: int) -> bytes:
        while len(self._raw) < size:
            self._receive()
        taken, self._raw = self._raw[:size], self._raw[size:]
        return taken

    def _read_body(self) -> None:
        """Move the next chunk (or the next bytes, unframed) into `body`."""
        if self.finished:
            raise EOFError("the stream ended")
        if not self.chunked:
            if not self._raw:
                try:
                    self._receive()
                except EOFError:
                    self.finished = True
                    raise
            self.body, self._raw = self.body + self._raw, b""
            return
        size_line = self._take_until(b"\r\n")
        assert CHUNK_SIZE_LINE.fullmatch(size_line), f"bad chunk size line {size_line!r}"
        size = int(size_line, 16)
        data = self._take(size + 2)
        assert data.endswith(b"\r\n"), f"chunk of {size} bytes not followed by CRLF: {data!r}"
        if size == 0:
            self.finished = True
            raise EOFError("the stream ended")
        self.body += data[:-2]

    def next_record(self) -> str:
        """The next SSE record (comments included), every line checked for shape."""
        while b"\n\n" not in self.body:
            self._read_body()
        record, _, self.body = self.body.partition(b"\n\n")
        text = record.decode("utf-8")
        if self.first_record is None:
            self.first_record = text
        for line in text.split("\n"):
            assert line.startswith(":") or re.fullmatch(r"[a-z]+: .*", line), (
                f"not an SSE line: {line!r}"
            )
        return text

    def next_event(self) -> Event:
        """The next record with data, as `EventStream` gives it; presence followed."""
        while True:
            fields: dict[str, str] = {}
            for line in self.next_record().split("\n"):
                if not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "data" in fields:
                data = json.loads(fields["data"])
                event = Event(fields.get("event", "message"), data, fields.get("id"))
                if event.event == "presence":
                    self.online = sorted(event.data["online"])
                elif event.event == "presence-change":
                    assert self.online is not None, "a change came before the list"
                    joined, left = set(event.data["joined"]), set(event.data["left"])
                    self.online = sorted((set(self.online) | joined) - left)
                return event

    def messages(self, count: int) -> list[Event]:
        found: list[Event] = []
        while len(found) < count:
            event = self.next_event()
            if event.event == "message":
                found.append(event)
        return found

    def messages_until(self, last_id: str) -> list[Event]:
        """Every message up to and including the one with `last_id`."""
        found: list[Event] = []
        while not found or found[-1].id != last_id:
            event = self.next_event()
            if event.event == "message":
                found.append(event)
        return found

    def wait_for_end(self) -> None:
        """Read to the end of the body (and of the connection, if it was asked to
        close or delimits the body): nothing may follow."""
        with contextlib.suppress(EOFError):
            while True:
                self._read_body()
        assert self.finished, "the connection ended before the body did"
        assert self.body == b"" and self._raw == b"", (self.body, self._raw)
        if self.closes or not self.chunked:
            assert self.sock.recv(1) == b"", "bytes after the end of the body"

    def set_timeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_raw(server: Service, path: str, **options: Any) -> RawStream:
    """A raw stream that has received its opening presence."""
    stream = RawStream(server.port, path, **options)
    assert stream.status == 200, stream.status_line
    assert stream.next_event().event == "presence"
    # The retry hint and the whole presence list come first, in one record.
    assert stream.first_record is not None
    assert stream.first_record.startswith("retry: 2000\nevent: presence\ndata: ")
    return stream


def fresh_stream_status(server: Service, room: Room, source: str) -> int:
    """The status a new stream from `source` gets (429 while its slots are taken)."""
    with RawStream(server.port, room.events_path(), source=source) as stream:
        return stream.status


def wait_until_shown(
    stream: RawStream | EventStream, names: list[str], timeout: float = 15
) -> None:
    """Read a stream until its presence shows exactly `names`."""
    deadline = time.monotonic() + timeout
    try:
        while stream.online != sorted(names):
            left = deadline - time.monotonic()
            assert left > 0, f"shows {stream.online}"
            stream.set_timeout(left)
            stream.next_event()
    except TimeoutError:
        pytest.fail(f"the stream stopped at {stream.online}, not {sorted(names)}")
    finally:
        stream.set_timeout(READ_TIMEOUT)


def read_until_cut(stream: RawStream) -> list[str]:
    """The ids of the messages a stream gets before its connection ends."""
    received: list[str] = []
    try:
        while True:
            received += [event.id or "" for event in stream.messages(1)]
    except (EOFError, ConnectionResetError):
        return received


# Nearly as long as a message may be (2000 characters with its number), in
# 4-byte characters: with its line, which repeats the text, a record of 16 KB.
LONG_TEXT = "\N{GRINNING FACE}" * 1990


def test_many_streams_get_every_message_once_in_order_and_well_framed(
    server: Service, closing: contextlib.ExitStack
) -> None:
    """50 streams of one room and 30 messages from another client: each stream
    gets all 30 in order, each once, in a body whose framing holds byte by byte
    (see `RawStream`)."""
    room = Room(server)
    room.join("alice")
    streams = [closing.enter_context(open_raw(server, room.events_path())) for _ in range(50)]
    posted = [room.say("alice", f"message {n}") for n in range(30)]
    for n, stream in enumerate(streams):
        received = stream.messages(30)
        assert [event.id for event in received] == posted, f"stream {n}"
        assert [event.data["text"] for event in received] == [f"message {m}" for m in range(30)]
    # Nothing was sent twice: the next message after the 30 is the next one posted.
    last = room.say("alice", "the end")
    for stream in streams:
        assert [event.id for event in stream.messages(1)] == [last]


def test_streams_joining_while_messages_pour_in_get_each_once(
    server: Service, closing: contextlib.ExitStack
) -> None:
    """Streams open while a client posts as fast as it can, each resuming from a
    message (`?after=` or `Last-Event-ID`) that the room's feed may be ahead of
    or behind: each gets every message after its cursor, once, in order."""
    room = Room(server)
    room.join("alice")
    # One stream from the start (before any message), so the room's feed runs.
    resumed = [(closing.enter_context(open_raw(server, room.events_path())), -1)]
    fresh: list[tuple[RawStream, int, int]] = []  # opened without a cursor
    posted: list[str] = []
    failures: list[BaseException] = []

    def post_all() -> None:
        try:
            for n in range(80):
                posted.append(room.say("alice", f"quick {n}"))
        except BaseException as error:
            failures.append(error)

    poster = threading.Thread(target=post_all)
    poster.start()
    closing.callback(poster.join, 60)
    deadline = time.monotonic() + 60
    for n in range(12):
        while len(posted) < 4 + 5 * n and poster.is_alive():
            assert time.monotonic() < deadline, "posting stalled"
            time.sleep(0.005)
        # Resume from the newest message, or from one a few messages back.
        index = max(len(posted) - 1 - (n % 3) * 3, 0)
        if n % 4 == 3:
            before = len(posted)
            stream = closing.enter_context(open_raw(server, room.events_path()))
            fresh.append((stream, before, len(posted)))
        elif n % 2:
            resume = {"Last-Event-ID": posted[index]}
            stream = closing.enter_context(open_raw(server, room.events_path(), headers=resume))
            resumed.append((stream, index))
        else:
            path = room.events_path(f"after={posted[index]}")
            resumed.append((closing.enter_context(open_raw(server, path)), index))
    poster.join(60)
    assert not failures, failures
    assert len(posted) == 80
    for stream, index in resumed:
        received = [event.id for event in stream.messages_until(posted[-1])]
        assert received == posted[index + 1 :], f"resumed after message {index}"
    for stream, before, after in fresh:
        # It starts after whatever was newest when it opened, then misses nothing.
        received = [event.id for event in stream.messages_until(posted[-1])]
        start = len(posted) - len(received)
        assert before <= start <= after + 1, (before, after, received)
        assert received == posted[start:]
    last = room.say("alice", "the end")
    for stream in [stream for stream, _ in resumed] + [stream for stream, _, _ in fresh]:
        assert [event.id for event in stream.messages(1)] == [last]


def test_a_stream_that_catches_up_slowly_joins_the_feed_where_it_is(
    sqlite_url: str, tmp_path: Path, closing: contextlib.ExitStack
) -> None:
    """A stream whose catch-up is long (its client reads slowly) falls behind the
    room's feed while messages and a presence change go out to the others, so
    it joins a feed that is ahead of it: it must get every message once, in
    order, and show the change too."""
    server = closing.enter_context(serving(tmp_path, sqlite_url))
    room = Room(server)
    room.join("alice")
    room.join("bob")
    # About 6 MB of history: more than the late stream's socket buffers take,
    # so its catch-up waits on its client while the feed goes on.
    posted = [room.say("alice", f"{n} {LONG_TEXT}") for n in range(400)]
    anchor = closing.enter_context(open_raw(server, room.events_path()))
    path = room.events_path(f"after={posted[0]}")
    late = closing.enter_context(RawStream(server.port, path, receive_buffer=4096))
    assert late.status == 200
    bob = closing.enter_context(
        EventStream(server.url, room.events_path("ticket=" + room.ticket("bob")))
    )
    assert bob.next_event().event == "presence"
    wait_until_shown(anchor, ["bob"])
    # Once half its first batch (200 messages) is read, the server goes on to its
    # last batch (given a moment), which again waits for the client.
    received = late.messages(100)
    time.sleep(0.3)
    meanwhile = [room.say("alice", f"meanwhile {n}") for n in range(5)]
    assert [event.id for event in anchor.messages(5)] == meanwhile
    received += late.messages_until(meanwhile[-1])
    assert [event.id for event in received] == posted[1:] + meanwhile
    wait_until_shown(late, ["bob"], timeout=8)
    last = room.say("alice", "the end")
    assert [event.id for event in late.messages(1)] == [last]


def test_a_client_that_never_reads_is_cut_off_and_holds_up_no_one(
    sqlite_url: str, tmp_path: Path, closing: contextlib.ExitStack
) -> None:
    """A stream whose client stops reading fills its socket, then queues up to
    `OUTLET_BYTES` (256 KiB), then is cut off; a reading stream of the same room
    gets each message within moments all along, and the slow client's stream
    slot (one per address here) comes back."""
    server = closing.enter_context(
        serving(
            tmp_path, sqlite_url, FLASKCHAT_MAX_STREAMS_PER_IP="1", FLASKCHAT_SSE_KEEPALIVE="600"
        )
    )
    room = Room(server)
    room.join("alice")
    slow = closing.enter_context(
        open_raw(server, room.events_path(), source="127.0.0.3", receive_buffer=4096)
    )
    reader = closing.enter_context(open_raw(server, room.events_path(), source="127.0.0.2"))
    posted: list[str] = []
    delays: list[float] = []
    for n in range(400):
        sent = time.monotonic()
        posted.append(room.say("alice", f"{n} {LONG_TEXT}"))
        assert [event.id for event in reader.messages(1)] == [posted[-1]]
        delays.append(time.monotonic() - sent)
        if n % 10 == 9 and fresh_stream_status(server, room, "127.0.0.3") == 200:
            break
    else:
        pytest.fail("the slow stream still held its slot after 400 messages (6 MB)")
    # Generous: a feed that waited for the slow socket would stall for good.
    assert max(delays) < 3, sorted(delays)[-5:]
    # The slow client reads what reached it, then the connection ends early.
    received = read_until_cut(slow)
    assert not (slow.chunked and slow.finished), "a cut-off stream ended as if cleanly"
    assert received == posted[: len(received)]
    assert len(received) < len(posted)
    last = room.say("alice", "still here")
    assert [event.id for event in reader.messages(1)] == [last]


def test_an_http_1_0_stream_gets_records_without_chunk_framing(
    sqlite_url: str, tmp_path: Path, closing: contextlib.ExitStack
) -> None:
    """HTTP/1.0 has no chunked encoding: the feed sends such a stream the bare
    records, messages and presence changes alike."""
    server = closing.enter_context(serving(tmp_path, sqlite_url))
    room = Room(server)
    room.join("alice")
    room.join("bob")
    old = closing.enter_context(RawStream(server.port, room.events_path(), version="HTTP/1.0"))
    assert old.status == 200, old.status_line
    assert not old.chunked and "transfer-encoding" not in old.headers, old.headers
    assert old.next_event().event == "presence"
    assert old.body == b"" and old.online == []
    posted = room.say("alice", "hello, old client")
    event = old.next_event()
    assert (event.event, event.id, event.data["text"]) == ("message", posted, "hello, old client")
    bob = closing.enter_context(
        EventStream(server.url, room.events_path("ticket=" + room.ticket("bob")))
    )
    assert bob.next_event().event == "presence"
    wait_until_shown(old, ["bob"])
    second = room.say("alice", "still unframed")
    assert [event.id for event in old.messages(1)] == [second]


def test_a_client_that_hangs_up_is_noticed_within_seconds(
    sqlite_url: str, tmp_path: Path, closing: contextlib.ExitStack
) -> None:
    """With keep-alives ten minutes apart only the feed's poll of its sockets can
    see a client go: among six streams of one room, the one that closes frees
    its address's single stream slot within seconds, and the others read on."""
    server = closing.enter_context(
        serving(
            tmp_path, sqlite_url, FLASKCHAT_MAX_STREAMS_PER_IP="1", FLASKCHAT_SSE_KEEPALIVE="600"
        )
    )
    room = Room(server)
    room.join("alice")
    leaving = closing.enter_context(open_raw(server, room.events_path()))
    others = [
        closing.enter_context(open_raw(server, room.events_path(), source=f"127.0.0.{n}"))
        for n in range(2, 7)
    ]
    assert fresh_stream_status(server, room, "127.0.0.1") == 429
    first = room.say("alice", "everyone is in the feed")
    for stream in [leaving, *others]:
        assert [event.id for event in stream.messages(1)] == [first]
    leaving.close()
    closed_at = time.monotonic()
    status = 429
    while status == 429 and time.monotonic() - closed_at < 15:
        time.sleep(0.2)
        status = fresh_stream_status(server, room, "127.0.0.1")
    noticed_after = time.monotonic() - closed_at
    assert status == 200
    # The feed looks every 2 s; the bound is generous for a loaded machine.
    assert noticed_after < 8, noticed_after
    again = room.say("alice", "the others are still here")
    for stream in others:
        assert [event.id for event in stream.messages(1)] == [again]


def test_an_open_stream_keeps_counting_as_a_connection_of_its_address(
    sqlite_url: str, tmp_path: Path, closing: contextlib.ExitStack
) -> None:
    """`MAX_CONNECTIONS_PER_IP` counts streams: however a stream is served, it
    holds one of its address's connections for as long as it is open, not only
    while gunicorn would wait on it for another request (one second here)."""
    server = closing.enter_context(
        serving(
            tmp_path,
            sqlite_url,
            "--keep-alive",
            "1",
            FLASKCHAT_MAX_CONNECTIONS_PER_IP="2",
            FLASKCHAT_MAX_STREAMS_PER_IP="2",
        )
    )
    room = Room(server)
    room.join("alice")
    streams = [closing.enter_context(open_raw(server, room.events_path())) for _ in range(2)]
    time.sleep(2.5)  # well past gunicorn's wait for another request
    posted = room.say("alice", "still open", source="127.0.0.2")
    for stream in streams:
        assert [event.id for event in stream.messages(1)] == [posted]
    status, reply = call(server.url, "/healthz")
    assert status == 429, reply


def test_presence_of_thirty_listeners_converges_on_every_stream(
    server: Service, closing: contextlib.ExitStack
) -> None:
    """30 members open ticketed streams one after another: every stream comes to
    show all 30 names; after 10 of them close their page and log out, every
    remaining stream shows the 20 left."""
    room = Room(server)
    names = [f"user{n:02}" for n in range(30)]
    for name in names:
        room.join(name)
    streams: list[EventStream] = []
    for name in names:
        path = room.events_path("ticket=" + room.ticket(name))
        streams.append(closing.enter_context(EventStream(server.url, path)))
        assert streams[-1].status == 200
    for stream in streams:
        wait_until_shown(stream, names)
    for stream, name in zip(streams[:10], names[:10], strict=True):
        stream.close()
        room.logout(name)
    for stream in streams[10:]:
        wait_until_shown(stream, names[10:])


def test_deleting_the_room_ends_every_stream_with_gone(
    server: Service, closing: contextlib.ExitStack
) -> None:
    """Each stream of the room, whatever its client, gets `event: gone` as its
    last record and then, at once, the end of its body: the last chunk, or the
    end of the connection where that delimits the body."""
    room = Room(server)
    room.join("alice")
    close = {"Connection": "close"}

    def raw(**options: Any) -> RawStream:
        return closing.enter_context(open_raw(server, room.events_path(), **options))

    streams: list[RawStream | EventStream] = [raw() for _ in range(3)]  # as browsers ask
    streams += [raw(headers=close) for _ in range(3)]
    streams.append(raw(version="HTTP/1.0"))
    streams += [
        closing.enter_context(EventStream(server.url, room.events_path())) for _ in range(3)
    ]
    posted = room.say("alice", "last words")
    for stream in streams:
        assert [event.id for event in stream.messages(1)] == [posted]
    status, reply = call(server.url, f"/{room.roomid}/delete_room", {"owner_key": room.owner_key})
    assert status == 200, reply
    deleted_at = time.monotonic()
    for n, stream in enumerate(streams):
        assert stream.next_event().event == "gone", f"stream {n}"
        if isinstance(stream, RawStream):
            stream.wait_for_end()
        else:
            with pytest.raises(EOFError):
                stream.next_event()
        # Immediate in fact; generous for a loaded machine, and shorter than the
        # 5 s a connection kept alive for another request would take to close.
        assert time.monotonic() - deleted_at < 3, f"stream {n} ended late"
    assert call(server.url, room.events_path())[0] == 404
