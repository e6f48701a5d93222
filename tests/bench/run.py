"""`make bench`: measure the recommended production setup on 127.0.0.1.

gunicorn with gevent workers runs the app on SQLite, then on Redis; `wrk` loads
plain requests and a small asyncio client holds event streams. Every figure is
the median of several rounds, with routes interleaved, and is divided by the
floor (a no-op route on the same server) measured in the same round. Request
figures are measured with one and with two workers (`--workers`). Prints a
Markdown table of figures, then the issue's targets with their status, and
writes JSON.

`FLASKCHAT_SQLITE_WAL_SHORTCUT=0` or `FLASKCHAT_REDIS_DIRECT=0` in the
environment reach the servers and measure the backends' plain ways (see the
backends' docstrings).
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Callable, Iterator
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


class Listener:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def until(self, marker: bytes) -> float:
        while True:
            line = await self.reader.readline()
            if not line:
                raise EOFError("stream closed")
            if marker in line:
                return time.perf_counter()

    def close(self) -> None:
        self.writer.close()


async def listen(port: int, path: str) -> Listener:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    listener = Listener(reader, writer)
    await listener.until(b"event: presence")
    return listener


async def open_listeners(port: int, path: str, count: int) -> list[Listener]:
    listeners: list[Listener] = []
    for start in range(0, count, 250):  # in batches, to stay under the listen backlog
        batch = [listen(port, path) for _ in range(start, min(start + 250, count))]
        listeners += await asyncio.gather(*batch)
    return listeners


async def fan_out(
    service: Service, room: dict[str, str], listeners: list[Listener]
) -> dict[str, float]:
    marker = f"fanout-{uuid.uuid4().hex}"
    waits = [asyncio.ensure_future(listener.until(marker.encode())) for listener in listeners]
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await asyncio.to_thread(
        call,
        service.url,
        f"/{room['roomid']}/message",
        {"username": room["username"], "token": room["token"], "message": marker},
    )
    done = await asyncio.gather(*waits)
    delays = sorted((t - start) * 1000 for t in done)
    return {
        "p50_ms": delays[len(delays) // 2],
        "p99_ms": delays[int(len(delays) * 0.99) - 1],
        "max_ms": delays[-1],
    }


def fan_out_figures(
    service: Service, room: dict[str, str], count: int, during: Callable[[], Any] | None = None
) -> dict[str, float]:
    async def run() -> dict[str, float]:
        [worker] = worker_pids(service)
        before = rss_kb(worker)
        listeners = await open_listeners(service.port, f"/{room['roomid']}/events", count)
        await asyncio.sleep(1.0)
        after = rss_kb(worker)
        # A p99 over 1,000 streams moves by 40-75 ms between single messages on
        # two shared cores; the median of 15 holds still enough to compare.
        rounds = [await fan_out(service, room, listeners) for _ in range(FAN_OUT_ROUNDS)]
        for listener in listeners:
            listener.close()
        figures = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        figures["kb_per_stream"] = (after - before) / count
        figures["worker_rss_kb"] = after
        return figures

    stop = threading.Event()
    if during is not None:
        thread = threading.Thread(target=during, args=(stop,), daemon=True)
        thread.start()
    try:
        return asyncio.run(run())
    finally:
        stop.set()


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
    store = RoomStore.from_url(store_url, hash_method=CHEAP)
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
        routes = {
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
    results: dict[str, Any] = {}
    with gunicorn(store_url, workers=1, FLASKCHAT_SSE_KEEPALIVE="3") as service:
        fan = make_room(store, "fan-out")
        results["fan_out"] = {n: fan_out_figures(service, fan, n) for n in (100, 1000, 5000)}
        churn = []
        for _ in range(5):
            churn.append(fan_out_figures(service, fan, 1000))
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
            "without": fan_out_figures(service, fan, 1000),
            "with_5_logins_per_s": fan_out_figures(service, fan, 1000, during=logins),
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
    for n, fan in figures.get("fan_out", {}).items():
        rows.append(
            f"| {kind} | fan-out to {n} streams, one worker | p50 {fan['p50_ms']:.1f} ms, "
            f"p99 {fan['p99_ms']:.1f} ms, max {fan['max_ms']:.1f} ms | "
            f"{fan['kb_per_stream']:.1f} KB per stream |"
        )
    if "churn" in figures:
        first, last = figures["churn"][0], figures["churn"][-1]
        rows.append(
            f"| {kind} | churn: 5 rounds of 1,000 streams, last vs first | "
            f"p99 {last['p99_ms']:.1f} vs {first['p99_ms']:.1f} ms, "
            f"RSS {last['worker_rss_kb']} vs {first['worker_rss_kb']} KB | "
            f"{last['p99_ms'] / first['p99_ms']:.2f} × p99, "
            f"{last['worker_rss_kb'] / first['worker_rss_kb']:.2f} × RSS |"
        )
    if "interference" in figures:
        calm = figures["interference"]["without"]
        busy = figures["interference"]["with_5_logins_per_s"]
        rows.append(
            f"| {kind} | fan-out p99 to 1,000 with 5 logins/s | {busy['p99_ms']:.1f} vs "
            f"{calm['p99_ms']:.1f} ms | {busy['p99_ms'] / calm['p99_ms']:.2f} × |"
        )
    return rows


NOT_MEASURED = "not measured"


def target_rows(results: dict[str, Any]) -> str:
    """The issue's targets, each with what this run measured and whether it is
    met. A target the run did not (or the bench cannot yet) measure says so."""
    sqlite = results.get("sqlite", {})
    fan_out = sqlite.get("fan_out", {}).get(5000)
    post = sqlite.get("requests", {}).get("2", {}).get("message_post")

    def target(
        what: str, goal: str, figure: dict[str, float] | None, key: str, limit: float, unit: str
    ) -> list[str]:
        """A row: `figure[key]` against `limit` (at most when `goal` says ≤)."""
        if figure is None:
            return [what, goal, NOT_MEASURED, NOT_MEASURED]
        value = figure[key]
        met = value <= limit if goal.startswith("≤") else value >= limit
        return [what, goal, unit.format(value), "met" if met else "**missed**"]

    targets = [
        ["fan-out CPU per delivered message", "≤ 15 µs", NOT_MEASURED, NOT_MEASURED],
        target(
            "memory per idle listener (RSS growth at 5,000 streams), SQLite",
            "≤ 16 KiB",
            fan_out,
            "kb_per_stream",
            16,
            "{:.1f} KiB",
        ),
        target(
            "fan-out p99 to 5,000 listeners, one worker, SQLite",
            "≤ 80 ms",
            fan_out,
            "p99_ms",
            80,
            "{:.1f} ms",
        ),
        target(
            "`message` POST, two workers, SQLite `synchronous=FULL`",
            "≥ 0.50 × floor",
            post,
            "ratio",
            0.5,
            "{:.2f} × floor",
        ),
        ["5,000 ticketed listeners connected", "within 10 s", NOT_MEASURED, NOT_MEASURED],
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
