"""`make bench`: measure the recommended production setup on 127.0.0.1.

gunicorn with gevent workers runs the app on SQLite, then on Redis; `wrk` loads
plain requests and a small asyncio client holds event streams. Every figure is
the median of several rounds, with routes interleaved, and is divided by the
floor (a no-op route on the same server) measured in the same round. Request
figures are measured with one and with two workers (`--workers`). Prints a
Markdown table of figures, then the issue's targets with their status, and
writes JSON.

Event streams (SQLite) are measured as the issue measured them: the server on
one core, the asyncio client on the other (gunicorn pinned to CPU 0, this
process to CPU 1 while a stream server runs). 1,000 and 5,000 streams,
anonymous or each with a ticket of its own member (presence), open on a fresh
worker; 20 s later (`STEADY_AFTER`) the worker's RSS growth per stream is
taken, then messages fan out and the worker's CPU is divided by the messages
delivered. Churn and interference compare rounds and skip that wait.

`FLASKCHAT_SQLITE_WAL_SHORTCUT=0` or `FLASKCHAT_REDIS_DIRECT=0` in the
environment reach the servers and measure the backends' plain ways (see the
backends' docstrings).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from flaskchat import RoomStore  # noqa: E402

from support import RedisServer, Service, free_port  # noqa: E402

PASSWORD = "correct horse battery"
CHEAP = "scrypt:1024:8:1"
# Messages sent to each set of open streams; their median is the figure.
FAN_OUT_ROUNDS = 15


# Servers


@contextmanager
def gunicorn(store_url: str, workers: int, **env: str) -> Iterator[Service]:
    binary = Path(sys.executable).parent / "gunicorn"
    port = free_port()
    service = Service(
        [
            str(binary),
            "-c",
            "python:flaskchat.gunicorn_config",
            "-w",
            str(workers),
            "-b",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "/dev/null",
            "--chdir",
            str(HERE),
            "bench_app:create_bench_app()",
        ],
        port,
        env={
            "FLASKCHAT_STORE_URL": store_url,
            "FLASKCHAT_RATELIMIT_ENABLED": "false",
            "FLASKCHAT_MAX_STREAMS_PER_IP": "100000",
            "FLASKCHAT_MAX_CONNECTIONS_PER_IP": "100000",
            **env,
        },
        log=Path(tempfile.gettempdir()) / f"flaskchat-bench-{port}.log",
    ).start()
    try:
        yield service
    finally:
        service.stop()


def worker_pids(service: Service) -> list[int]:
    assert service.process is not None
    pid = service.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (fields 14 and 15 of its stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# Plain requests with wrk


def wrk(
    url: str,
    seconds: int,
    *,
    script: Path | None = None,
    header: str | None = None,
    env: dict[str, str] | None = None,
    connections: int = 16,
) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", str(script)]
    if header:
        argv += ["-H", header]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": _latency(out, "50"),
        "p99_ms": _latency(out, "99"),
        "errors": float(errors[1]) if errors else 0.0,
    }


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(\w+)", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure_routes(
    base: str,
    routes: dict[str, dict[str, Any]],
    rounds: int,
    seconds: int,
    connections: int = 16,
) -> dict[str, dict[str, float]]:
    """Interleave routes round by round; report medians and the ratio to the
    floor of the same round."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
    for _ in range(rounds):
        floor = wrk(base + "/_noop", seconds, connections=connections)
        samples.setdefault("floor", []).append(floor)
        for name, options in routes.items():
            result = wrk(
                base + options["path"],
                seconds,
                script=options.get("script"),
                header=options.get("header"),
                env=options.get("env"),
                connections=connections,
            )
            result["ratio"] = result["rps"] / floor["rps"]
            samples[name].append(result)
    return {
        name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
        for name, runs in samples.items()
    }


# Event streams with asyncio

# Streams opening at once (more would overflow the server's listen backlog).
OPENING_AT_ONCE = 250
# Steady state: figures of open streams are taken this long after they all
# connected, past the connection burst and the first presence renewal (15 s).
STEADY_AFTER = 20.0
# The longest a set of streams may take to open and see everyone present; the
# run goes on without the ones that did not make it.
CONNECT_DEADLINE = 120.0
# The longest one message may take to reach every stream.
FAN_OUT_DEADLINE = 60.0
# The longest line a stream may send: a presence list of 5,000 names is ~80 KB.
LINE_LIMIT = 1024 * 1024
# Full presence lists kept parsed: thousands of streams get the same one.
PARSED_LISTS = 16
# Open streams of the steady-state figures; the first size is also measured
# without the steady-state wait for the churn and interference figures.
STREAM_SIZES = (1000, 5000)
# A room may hold this many accounts on the stream servers (one per ticketed listener).
MAX_USERS_PER_ROOM = 10_000
SERVER_CPU, CLIENT_CPU = 0, 1


class Roster:
    """The names of a room's ticketed listeners. A listener's view of presence
    is a bytearray with a slot per name (5,000 views of 5,000 names take 25 MB,
    where sets would take gigabytes); a full list is parsed once however many
    listeners receive it."""

    def __init__(self, names: list[str]) -> None:
        self.slots = {name: n for n, name in enumerate(names)}
        self._parsed: dict[bytes, tuple[bytes, int]] = {}

    def __len__(self) -> int:
        return len(self.slots)

    def full(self, data: bytes) -> tuple[bytes, int]:
        """`{"online": [...]}` as slots and how many of the roster it names."""
        parsed = self._parsed.get(data)
        if parsed is None:
            seen = bytearray(len(self.slots))
            for name in json.loads(data)["online"]:
                slot = self.slots.get(name)
                if slot is not None:
                    seen[slot] = 1
            parsed = (bytes(seen), seen.count(1))
            if len(self._parsed) >= PARSED_LISTS:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[data] = parsed
        return parsed

    def change(self, seen: bytearray, count: int, data: bytes) -> int:
        """Apply `{"joined": [...], "left": [...]}` to `seen`; returns the new count."""
        change = json.loads(data)
        for name in change.get("joined", ()):
            slot = self.slots.get(name)
            if slot is not None and not seen[slot]:
                seen[slot] = 1
                count += 1
        for name in change.get("left", ()):
            slot = self.slots.get(name)
            if slot is not None and seen[slot]:
                seen[slot] = 0
                count -= 1
        return count


class Arrivals:
    """When one message reached each of `count` streams: a list and a future
    for them all (a future per stream cost the client 2 µs per delivery)."""

    def __init__(self, marker: bytes, count: int) -> None:
        self.marker, self.count = marker, count
        self.times: list[float] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def note(self, at: float) -> None:
        self.times.append(at)
        if len(self.times) == self.count and not self.done.done():
            self.done.set_result(None)

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class Listener(asyncio.Protocol):
    """One event stream, parsed as its bytes arrive: a protocol rather than a
    StreamReader, so that 5,000 streams cost the client less than the server.
    Notes when the stream opened (its first presence record), when its view of
    presence first held every name of its roster, and when the message it
    awaits arrived.

    Presence comes as `presence` (`{"online": [...]}`, the full list) and may
    come as `presence-change` (`{"joined": [...], "left": [...]}`, applied to
    the last list); only `data:` lines of presence records are parsed, a
    message record is only searched for the marker."""

    def __init__(self, roster: Roster | None) -> None:
        self.roster = roster
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.complete_at: float | None = None
        self.seen: bytes | bytearray = b""
        self.count = 0
        self.awaiting: Arrivals | None = None
        self._pending = b""
        self._event = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\n" not in data:
            self._pending += data
            if len(self._pending) > LINE_LIMIT:
                self._fail(ValueError(f"a line longer than {LINE_LIMIT} bytes"))
            return
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                self._data(line[6:])
            elif line.startswith(b"event: "):
                self._event = line[7:]
            elif line.startswith(b"HTTP/") and not line.startswith(b"HTTP/1.1 200"):
                self._fail(ConnectionError(line.decode(errors="replace").strip()))

    def _data(self, data: bytes) -> None:
        if self._event == b"message":
            arrivals = self.awaiting
            if arrivals is not None and arrivals.marker in data:
                self.awaiting = None
                arrivals.note(time.perf_counter())
            return
        if self._event == b"presence":
            if self.roster is not None:
                self.seen, self.count = self.roster.full(data)
        elif self._event == b"presence-change":
            if self.roster is not None:
                if not isinstance(self.seen, bytearray):
                    self.seen = bytearray(self.seen)
                self.count = self.roster.change(self.seen, self.count, data)
        else:
            return
        now = time.perf_counter()
        if not self.opened.done():
            self.opened.set_result(now)
        if self.complete_at is None and (self.roster is None or self.count == len(self.roster)):
            self.complete_at = now

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or EOFError("stream closed"))

    def _fail(self, error: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.awaiting is not None:
            self.awaiting.fail(error)
        self.close()

    def close(self) -> None:
        """Hang up: nothing waits on this stream any more."""
        self.opened.cancel()  # does nothing to a future already done
        self.awaiting = None
        if self.transport is not None:
            self.transport.close()


async def listen(port: int, path: str, roster: Roster | None = None) -> Listener:
    """Open a stream; returns once its first presence record is in."""
    _transport, listener = await asyncio.get_running_loop().create_connection(
        lambda: Listener(roster), "127.0.0.1", port
    )
    assert listener.transport is not None
    listener.transport.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    try:
        await listener.opened
    except BaseException:
        listener.close()
        raise
    return listener


# A stream's path, or a function that gives it just before the stream opens.
StreamPath = str | Callable[[], str]


async def open_listeners(
    port: int, paths: Sequence[StreamPath], roster: Roster | None = None
) -> tuple[list[Listener], dict[int, BaseException]]:
    """Open a stream per path, `OPENING_AT_ONCE` at a time, for at most
    `CONNECT_DEADLINE` in all: the streams that opened, and why the others
    (by their index in `paths`) did not."""
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    deadline = time.monotonic() + CONNECT_DEADLINE

    async def one(path: StreamPath) -> Listener:
        async with gate:
            opening = listen(port, path if isinstance(path, str) else path(), roster)
            return await asyncio.wait_for(opening, deadline - time.monotonic())

    opened = await asyncio.gather(*(one(path) for path in paths), return_exceptions=True)
    listeners = [result for result in opened if isinstance(result, Listener)]
    refused = {n: result for n, result in enumerate(opened) if not isinstance(result, Listener)}
    return listeners, refused


async def everyone_present(listeners: list[Listener], since: float) -> float:
    """Seconds from `since` until every listener's view of presence held its
    whole roster (or the stream opened, without one), waiting at most
    `CONNECT_DEADLINE`: the caller counts who got there."""
    while any(listener.complete_at is None for listener in listeners):
        if time.perf_counter() - since > CONNECT_DEADLINE:
            break
        await asyncio.sleep(0.05)
    return max(listener.complete_at or time.perf_counter() for listener in listeners) - since


async def fan_out(
    service: Service, room: dict[str, str], listeners: list[Listener]
) -> dict[str, float]:
    marker = f"fanout-{uuid.uuid4().hex}"
    arrivals = Arrivals(marker.encode(), len(listeners))
    for listener in listeners:
        listener.awaiting = arrivals
    start = time.perf_counter()
    try:
        await asyncio.to_thread(
            call,
            service.url,
            f"/{room['roomid']}/message",
            {"username": room["username"], "token": room["token"], "message": marker},
        )
        await asyncio.wait_for(arrivals.done, FAN_OUT_DEADLINE)
    finally:
        arrivals.done.cancel()  # a stream lost later has no one to tell
    delays = sorted((t - start) * 1000 for t in arrivals.times)
    return {
        "p50_ms": delays[len(delays) // 2],
        "p99_ms": delays[int(len(delays) * 0.99) - 1],
        "max_ms": delays[-1],
    }


def fan_out_figures(
    service: Service,
    room: dict[str, str],
    paths: list[str],
    roster: Roster | None = None,
    settle: float = 1.0,
    during: Callable[[threading.Event], Any] | None = None,
    again: Callable[[int], StreamPath] | None = None,
) -> dict[str, Any]:
    """Open a stream per path, wait `settle` seconds after they all connected
    (and saw everyone present), then send `FAN_OUT_ROUNDS` messages. Memory is
    the worker's RSS growth per stream at the end of the wait, idle CPU its
    second half; CPU per delivered message is the worker's CPU during the
    rounds over rounds x streams.

    A server that cannot keep up still gets its figures: what failed is in
    `problems`, and figures it never reached are None. Streams refused in the
    timed opening (a ticket expired while others connected) are opened once
    more, untimed, from `again(index)`, so that the steady state has them all."""

    async def run() -> dict[str, Any]:
        [worker] = worker_pids(service)
        # A first stream and message, so that lazy imports and caches do not
        # count as the listeners' memory.
        warm = await listen(service.port, f"/{room['roomid']}/events")
        await fan_out(service, room, [warm])
        warm.close()
        before = rss_kb(worker)
        start, client = time.perf_counter(), time.process_time()
        listeners, refused = await open_listeners(service.port, paths, roster)
        opened_s = max((listener.opened.result() for listener in listeners), default=start) - start
        # With someone missing, no view of presence can be complete.
        ready_s = None if refused else await everyone_present(listeners, start)
        ready_streams = sum(listener.complete_at is not None for listener in listeners)
        client_opening = time.process_time() - client
        problems = []
        if refused:
            problems.append(
                f"{len(refused):,} of {len(paths):,} did not open in time: "
                f"{next(iter(refused.values()))!r}"
            )
        if refused and again is not None:
            more, still = await open_listeners(service.port, [again(n) for n in refused], roster)
            listeners += more
            if still:
                problems.append(f"{len(still):,} did not open at a second try")
        if not listeners:
            raise RuntimeError("; ".join(problems))
        connected = time.perf_counter()
        await asyncio.sleep(settle / 2)
        idle_from, idle_cpu = time.perf_counter(), cpu_seconds(worker)
        await asyncio.sleep(max(0.0, connected + settle - time.perf_counter()))
        idle = (cpu_seconds(worker) - idle_cpu) / (time.perf_counter() - idle_from)
        after = rss_kb(worker)
        # A p99 over 1,000 streams moves by 40-75 ms between single messages on
        # two shared cores; the median of 15 holds still enough to compare.
        rounds: list[dict[str, float]] = []
        busy, used = cpu_seconds(worker), 0.0
        client, client_used = time.process_time(), 0.0
        try:
            for _ in range(FAN_OUT_ROUNDS):
                rounds.append(await fan_out(service, room, listeners))
                used = cpu_seconds(worker) - busy
                client_used = time.process_time() - client
        except (OSError, EOFError) as error:  # timeouts and closed streams included
            problems.append(f"fan-out round {len(rounds) + 1} failed: {error!r}")
        for listener in listeners:
            listener.close()
        keys = ("p50_ms", "p99_ms", "max_ms")
        figures: dict[str, Any] = {
            key: statistics.median(r[key] for r in rounds) if rounds else None for key in keys
        }
        figures["rounds"] = len(rounds)
        deliveries = len(rounds) * len(listeners)
        figures["cpu_us_per_delivery"] = 1e6 * used / deliveries if rounds else None
        # The client's share, to tell its delays from the server's.
        figures["client_cpu_us_per_delivery"] = 1e6 * client_used / deliveries if rounds else None
        figures["client_cpu_opening_s"] = client_opening
        figures["requested"] = len(paths)
        figures["refused"] = len(refused)
        figures["streams"] = len(listeners)
        figures["opened_s"] = opened_s
        figures["ready_s"] = ready_s
        figures["ready_streams"] = ready_streams
        figures["idle_cpu_percent"] = 100 * idle
        figures["kb_per_stream"] = (after - before) / len(listeners)
        figures["worker_rss_kb"] = after
        figures["problems"] = problems
        return figures

    stop = threading.Event()
    if during is not None:
        thread = threading.Thread(target=during, args=(stop,), daemon=True)
        thread.start()
    try:
        return asyncio.run(run())
    finally:
        stop.set()


@contextmanager
def stream_server(store_url: str) -> Iterator[Service]:
    """One worker for event streams, pinned as the issue measured: the server
    on one core, this process (the client) on the other. Without two CPUs to
    spare, nothing is pinned."""
    with gunicorn(
        store_url,
        workers=1,
        FLASKCHAT_SSE_KEEPALIVE="3",
        FLASKCHAT_MAX_USERS_PER_ROOM=str(MAX_USERS_PER_ROOM),
    ) as service:
        mine = os.sched_getaffinity(0)
        if {SERVER_CPU, CLIENT_CPU} <= mine:
            assert service.process is not None
            for pid in (service.process.pid, *worker_pids(service)):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    os.sched_setaffinity(int(task.name), {SERVER_CPU})
            # The calling thread only: threads started from now on inherit it.
            os.sched_setaffinity(0, {CLIENT_CPU})
        try:
            yield service
        finally:
            os.sched_setaffinity(0, mine)


def listeners_figures(
    store_url: str, store: RoomStore, count: int, ticketed: bool
) -> dict[str, Any]:
    """`count` streams, anonymous or each with a ticket of its own member, on a
    fresh worker, measured in steady state."""
    kind = "ticketed" if ticketed else "anonymous"
    room = make_room(store, f"{kind} {count}")
    events = f"/{room['roomid']}/events"
    tokens = {}
    if ticketed:
        for n in range(count):
            name = store.register(room["roomid"], f"listener{n:05d}", PASSWORD)
            tokens[name] = store.login(room["roomid"], name, PASSWORD)
    names = list(tokens)

    def ticketed_path(name: str) -> str:
        return f"{events}?ticket={store.issue_ticket(room['roomid'], name, tokens[name])}"

    with stream_server(store_url) as service:
        if not ticketed:
            figures = fan_out_figures(service, room, [events] * count, settle=STEADY_AFTER)
        else:
            # Tickets live a minute: issued just before the streams open (and
            # at a second try, as each stream opens).
            figures = fan_out_figures(
                service,
                room,
                [ticketed_path(name) for name in names],
                Roster(names),
                settle=STEADY_AFTER,
                again=lambda n: functools.partial(ticketed_path, names[n]),
            )
    rounded = {key: round(v, 2) if isinstance(v, float) else v for key, v in figures.items()}
    print(f"{count:,} {kind} streams: {rounded}", file=sys.stderr)
    return figures


# Five logins a second, each in a thread of its own, until terminated.
LOGIN_LOOP = """
import sys, threading, time, urllib.request

url, body = sys.argv[1], sys.argv[2].encode()

def login():
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()

while True:
    threading.Thread(target=login, daemon=True).start()
    time.sleep(0.2)
"""


# Data


def make_room(store: RoomStore, alias: str = "bench") -> dict[str, str]:
    roomid = store.create_room(alias)
    store.register(roomid, "bench", PASSWORD)
    token = store.login(roomid, "bench", PASSWORD)
    return {"roomid": roomid, "username": "bench", "token": token}


def fill(store: RoomStore, room: dict[str, str], count: int) -> None:
    """Give a room `count` messages, written straight through the backend (the
    same rows the API writes, much faster than posting them)."""
    from datetime import UTC, datetime

    from flaskchat.backends import StoredMessage

    now = datetime.now(UTC)
    dump = store.backend.dump_room(room["roomid"])
    dump.messages = [StoredMessage(str(n), now, "bench", f"history {n}") for n in range(count)]
    store.backend.delete_room(room["roomid"])
    store.backend.restore_room(dump)


def many_rooms(store: RoomStore, count: int) -> None:
    for n in range(count):
        store.backend.create_room(f"b{n:021d}", f"room {n}")


# The whole run


def run_store(
    kind: str,
    store_url: str,
    rounds: int,
    seconds: int,
    parts: set[str],
    workers: list[int] | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    store = RoomStore.from_url(store_url, hash_method=CHEAP, max_users_per_room=MAX_USERS_PER_ROOM)
    small = make_room(store, "small")
    for n in range(100):
        store.post_message(small["roomid"], "bench", small["token"], f"message {n}")
    middle = store.messages(small["roomid"], limit=60).messages[0].id

    if "requests" in parts:
        # By worker count; JSON keys are strings.
        results["requests"] = {
            str(count): request_figures(store_url, store, small, middle, rounds, seconds, count)
            for count in workers or [1, 2]
        }
    if kind == "sqlite" and "streams" in parts:
        results.update(stream_figures(store_url, store))
    if "growth" in parts:
        results["growth"] = growth_figures(store_url, store, small, middle, rounds, seconds)
    if "idle" in parts:
        results["idle"] = idle_figures(store_url, store, IDLE_SECONDS)
    store.close()
    return results


def request_figures(
    store_url: str,
    store: RoomStore,
    small: dict[str, str],
    middle: str,
    rounds: int,
    seconds: int,
    workers: int = 1,
) -> dict[str, dict[str, float]]:
    # Posts go to a room of their own: in the read room they would change the
    # conversation, so that the 304 route answered 200 from the second round on,
    # and the growth part's room of 10^2 messages would hold thousands.
    posts = make_room(store, "posts")
    with gunicorn(store_url, workers=workers) as service:
        conversation = f"{service.url}/{small['roomid']}/get_conversation"
        etag = urllib.request.urlopen(conversation).headers["ETag"]
        routes: dict[str, dict[str, Any]] = {
            "get_conversation": {"path": f"/{small['roomid']}/get_conversation"},
            "get_conversation_304": {
                "path": f"/{small['roomid']}/get_conversation",
                "header": f"If-None-Match: {etag}",
            },
            "messages_before": {"path": f"/{small['roomid']}/messages?before={middle}"},
            "message_post": {
                "path": "/",
                "script": HERE / "post.lua",
                "env": {"ROOM": posts["roomid"], "USERNAME": "bench", "TOKEN": posts["token"]},
            },
        }
        figures = measure_routes(service.url, routes, rounds, seconds)
        check = urllib.request.Request(conversation, headers={"If-None-Match": etag})
        try:
            urllib.request.urlopen(check)
        except urllib.error.HTTPError as answer:
            if answer.code == 304:
                return figures
        raise RuntimeError("the read room changed while it was measured")


def stream_figures(store_url: str, store: RoomStore) -> dict[str, Any]:
    """Fan-out to anonymous and to ticketed streams, each size on a fresh
    worker in steady state; then churn and interference, which compare rounds
    with one another and skip the steady-state wait. JSON keys are strings."""
    results: dict[str, Any] = {
        "fan_out": {
            "anonymous": {
                str(n): listeners_figures(store_url, store, n, ticketed=False)
                for n in (100, *STREAM_SIZES)
            },
            "ticketed": {
                str(n): listeners_figures(store_url, store, n, ticketed=True) for n in STREAM_SIZES
            },
        }
    }
    with stream_server(store_url) as service:
        fan = make_room(store, "churn")
        paths = [f"/{fan['roomid']}/events"] * STREAM_SIZES[0]
        churn = []
        for _ in range(5):
            churn.append(fan_out_figures(service, fan, paths))
            time.sleep(4)  # dead streams are noticed at the next keep-alive
        results["churn"] = churn

        store.register(fan["roomid"], "visitor", PASSWORD)  # logs in and out all the time

        def logins(stop: threading.Event) -> None:
            """Logins from a process of their own, so that they load the server and
            not the client that measures the fan-out."""
            body = json.dumps({"username": "visitor", "password": PASSWORD})
            url = f"{service.url}/{fan['roomid']}/login"
            process = subprocess.Popen([sys.executable, "-c", LOGIN_LOOP, url, body])
            stop.wait()
            process.terminate()
            process.wait()

        results["interference"] = {
            "without": fan_out_figures(service, fan, paths),
            "with_5_logins_per_s": fan_out_figures(service, fan, paths, during=logins),
        }
    return results


# Idle streams: half anonymous, half with a ticket (presence), measured after
# their first presence renewal (15 s) is past.
IDLE_STREAMS = 10
IDLE_WARM_UP = 20.0
IDLE_SECONDS = 60.0


def idle_figures(store_url: str, store: RoomStore, seconds: float) -> dict[str, float]:
    """The worker's CPU while streams stay open and nothing happens."""
    room = make_room(store, "idle")

    async def run(service: Service) -> dict[str, float]:
        [worker] = worker_pids(service)
        paths = []
        for n in range(IDLE_STREAMS):
            path = f"/{room['roomid']}/events"
            if n % 2:
                body = {"username": room["username"], "token": room["token"]}
                ticket = call(service.url, f"/{room['roomid']}/ticket", body)["ticket"]
                path += f"?ticket={ticket}"
            paths.append(path)
        listeners = [await listen(service.port, path) for path in paths]
        await asyncio.sleep(IDLE_WARM_UP)
        before, started = cpu_seconds(worker), time.monotonic()
        await asyncio.sleep(seconds)
        used, took = cpu_seconds(worker) - before, time.monotonic() - started
        for listener in listeners:
            listener.close()
        return {"streams": IDLE_STREAMS, "seconds": took, "cpu_percent": 100 * used / took}

    with gunicorn(store_url, workers=1) as service:
        return asyncio.run(run(service))


def growth_figures(
    store_url: str, store: RoomStore, small: dict[str, str], middle: str, rounds: int, seconds: int
) -> dict[str, dict[str, float]]:
    big = make_room(store, "big")
    fill(store, big, 1_000_000)
    many_rooms(store, 10_000)
    big_middle = store.messages(big["roomid"], limit=200).messages[0].id
    with gunicorn(store_url, workers=1) as service:
        return measure_routes(
            service.url,
            {
                "small_get_conversation": {"path": f"/{small['roomid']}/get_conversation"},
                "big_get_conversation": {"path": f"/{big['roomid']}/get_conversation"},
                "small_messages_before": {"path": f"/{small['roomid']}/messages?before={middle}"},
                "big_messages_before": {"path": f"/{big['roomid']}/messages?before={big_middle}"},
            },
            rounds,
            seconds,
            # One request at a time: the latency of a read, not of a queue. Under
            # 16 connections a gevent worker serves them unevenly, and p50 moved
            # by 30 % between identical runs.
            connections=1,
        )


def table(results: dict[str, Any]) -> str:
    rows = ["| store | figure | value | ratio / target |", "|---|---|---|---|"]
    for kind, figures in results.items():
        for workers, req in figures.get("requests", {}).items():
            rows += request_rows(kind, int(workers), req)
        growth = figures.get("growth")
        if growth:
            rows += growth_rows(kind, growth)
        rows += stream_rows(kind, figures)
        idle = figures.get("idle")
        if idle:
            rows.append(
                f"| {kind} | {idle['streams']} idle streams (half with presence), "
                f"{idle['seconds']:.0f} s | {idle['cpu_percent']:.2f} % of a core | target < 5 % |"
            )
    return "\n".join(rows)


def request_rows(kind: str, workers: int, req: dict[str, dict[str, float]]) -> list[str]:
    floor = req["floor"]
    on = f"{workers} worker{'s' if workers > 1 else ''}"
    rows = [
        f"| {kind} | floor (no-op route), {on} | {floor['rps']:.0f} req/s, "
        f"p50 {floor['p50_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms | 1.00 |"
    ]
    for name in ("get_conversation", "get_conversation_304", "messages_before", "message_post"):
        r = req[name]
        rows.append(
            f"| {kind} | {name}, {on} | {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms | {r['ratio']:.2f} × floor |"
        )
    return rows


def growth_rows(kind: str, growth: dict[str, dict[str, float]]) -> list[str]:
    rows = []
    for what in ("get_conversation", "messages_before"):
        small, big = growth[f"small_{what}"], growth[f"big_{what}"]
        rows.append(
            f"| {kind} | growth {what}: p50 with 10^6 vs 10^2 messages | "
            f"{big['p50_ms']:.2f} vs {small['p50_ms']:.2f} ms | "
            f"{big['p50_ms'] / small['p50_ms']:.2f} × |"
        )
    return rows


def stream_rows(kind: str, figures: dict[str, Any]) -> list[str]:
    rows = []
    for mode, sizes in figures.get("fan_out", {}).items():
        for n, fan in sizes.items():
            streams = f"{int(n):,} {mode} streams, one worker"
            latency = ", ".join(
                f"{key[:-3]} {shown(fan[key], '{:.1f} ms')}"
                for key in ("p50_ms", "p99_ms", "max_ms")
            )
            cpu = shown(fan["cpu_us_per_delivery"], "{:.1f} µs")
            client = shown(fan["client_cpu_us_per_delivery"], "{:.1f} µs")
            notes = [f"client CPU {fan['client_cpu_opening_s']:.1f} s", *fan["problems"]]
            opened, what = f"{fan['opened_s']:.1f} s", "all open"
            if mode == "ticketed":
                opened, what = f"{opened}, {ready(fan)}", "all open, everyone present"
            rows += [
                f"| {kind} | fan-out to {streams}, after {STEADY_AFTER:.0f} s | {latency} "
                f"| {cpu} CPU per delivered message (client {client}) |",
                f"| {kind} | {streams}: memory, idle CPU after {STEADY_AFTER:.0f} s | "
                f"{fan['kb_per_stream']:.1f} KiB per stream, worker RSS {fan['worker_rss_kb']} KiB "
                f"| {fan['idle_cpu_percent']:.1f} % of a core idle |",
                f"| {kind} | {streams}: {what} | {opened} | {'; '.join(notes)} |",
            ]
    if "churn" in figures:
        first, last = figures["churn"][0], figures["churn"][-1]
        rows.append(
            f"| {kind} | churn: 5 rounds of {first['requested']:,} streams, last vs first | "
            f"p99 {shown(last['p99_ms'], '{:.1f}')} vs {shown(first['p99_ms'], '{:.1f} ms')}, "
            f"RSS {last['worker_rss_kb']} vs {first['worker_rss_kb']} KiB | "
            f"{times(last['p99_ms'], first['p99_ms'])} p99, "
            f"{times(last['worker_rss_kb'], first['worker_rss_kb'])} RSS |"
        )
    if "interference" in figures:
        calm = figures["interference"]["without"]
        busy = figures["interference"]["with_5_logins_per_s"]
        rows.append(
            f"| {kind} | fan-out p99 to {calm['requested']:,} with 5 logins/s | "
            f"{shown(busy['p99_ms'], '{:.1f}')} vs {shown(calm['p99_ms'], '{:.1f} ms')} | "
            f"{times(busy['p99_ms'], calm['p99_ms'])} |"
        )
    return rows


def shown(value: float | None, unit: str) -> str:
    """A figure in its unit, or "none" where the run never got it."""
    return "none" if value is None else unit.format(value)


def times(value: float | None, base: float | None) -> str:
    return "none" if value is None or not base else f"{value / base:.2f} ×"


def ready(fan: dict[str, Any]) -> str:
    """How long until every stream saw everyone present, or why never."""
    if fan["refused"]:
        return f"never: {fan['refused']:,} of {fan['requested']:,} did not open in time"
    if fan["ready_streams"] < fan["requested"]:
        return (
            f"not within {fan['ready_s']:.0f} s "
            f"({fan['ready_streams']:,} of {fan['requested']:,} saw everyone)"
        )
    return f"{fan['ready_s']:.1f} s"


NOT_MEASURED = "not measured"


def target_rows(results: dict[str, Any]) -> str:
    """The issue's targets, each with what this run measured and whether it is
    met. A target the run did not measure says so."""
    sqlite = results.get("sqlite", {})
    post = sqlite.get("requests", {}).get("2", {}).get("message_post")

    def streams(mode: str, count: int) -> dict[str, Any] | None:
        figures: dict[str, Any] | None = sqlite.get("fan_out", {}).get(mode, {}).get(str(count))
        return figures

    def target(
        what: str, goal: str, figure: dict[str, Any] | None, key: str, limit: float, unit: str
    ) -> list[str]:
        """A row: `figure[key]` against `limit` (at most when `goal` says ≤); a
        figure the run never got (the server did not keep up) is missed."""
        if figure is None:
            return [what, goal, NOT_MEASURED, NOT_MEASURED]
        value = figure[key]
        if value is None:
            return [what, goal, f"none: {figure['problems'][-1]}", "**missed**"]
        met = value <= limit if goal.startswith("≤") else value >= limit
        measured = unit.format(value)
        if figure.get("streams", 0) < figure.get("requested", 0):  # not at the size asked
            met, measured = False, f"{measured} with {figure['streams']:,} open"
        return [what, goal, measured, "met" if met else "**missed**"]

    modes = ("anonymous", "ticketed")
    largest = STREAM_SIZES[-1]
    targets = [
        target(
            f"fan-out CPU per delivered message, {n:,} {mode} streams, SQLite",
            "≤ 15 µs",
            streams(mode, n),
            "cpu_us_per_delivery",
            15,
            "{:.1f} µs",
        )
        for mode in modes
        for n in STREAM_SIZES
    ]
    targets += [
        target(
            f"memory per idle listener, {n:,} {mode} streams, SQLite",
            "≤ 16 KiB",
            streams(mode, n),
            "kb_per_stream",
            16,
            "{:.1f} KiB",
        )
        for mode in modes
        for n in STREAM_SIZES
    ]
    targets += [
        target(
            f"fan-out p99 to {largest:,} {mode} listeners, one worker, SQLite",
            "≤ 80 ms",
            streams(mode, largest),
            "p99_ms",
            80,
            "{:.1f} ms",
        )
        for mode in modes
    ]
    ticketed = streams("ticketed", largest)
    connected = target(
        f"{largest:,} ticketed listeners connected, presence reached all of them, SQLite",
        "≤ 10 s",
        ticketed,
        "ready_s",
        10,
        "{:.1f} s",
    )
    if ticketed is not None and ticketed["ready_streams"] < ticketed["requested"]:
        connected[2:] = [ready(ticketed), "**missed**"]  # some never opened, or never saw all
    targets += [
        connected,
        target(
            "`message` POST, two workers, SQLite, each 200 on disk",
            "≥ 0.50 × floor",
            post,
            "ratio",
            0.5,
            "{:.2f} × floor",
        ),
    ]
    rows = ["| target | goal | measured | status |", "|---|---|---|---|"]
    rows += ["| " + " | ".join(row) + " |" for row in targets]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument(
        "--parts", default="requests,streams,growth,idle", help="which figures to measure"
    )
    parser.add_argument(
        "--workers", default="1,2", help="gunicorn worker counts for the request figures"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    workers = [int(count) for count in args.workers.split(",")]
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install wrk redis-server")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for kind in args.stores.split(","):
            if kind == "sqlite":
                results[kind] = run_store(
                    kind,
                    f"sqlite:///{work}/bench.sqlite3",
                    args.rounds,
                    args.seconds,
                    parts,
                    workers,
                )
            else:
                directory = Path(work) / "redis"
                directory.mkdir()
                redis = RedisServer(directory)
                redis.argv[redis.argv.index("always")] = "everysec"
                redis.start()
                try:
                    results[kind] = run_store(
                        kind, redis.redis_url, args.rounds, args.seconds, parts, workers
                    )
                finally:
                    redis.stop()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(results))
    print()
    print(target_rows(results))


if __name__ == "__main__":
    main()
