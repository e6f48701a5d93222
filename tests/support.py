"""Helpers for tests that start real parts: find them, start them, stop them."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_executable(name: str, *candidates: str) -> str:
    """Path of a program the test needs: skipped on a laptop without it, a failure in CI."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate)
        if found:
            return found
    message = f"{name} is not installed"
    if IN_CI:
        pytest.fail(f"{message}, and CI must run every test")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    """Block until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@functools.cache
def _has_control_socket(gunicorn: str) -> bool:
    help_text = subprocess.run([gunicorn, "--help"], capture_output=True, text=True).stdout
    return "--no-control-socket" in help_text


class Service:
    """A real process in its own session, so that stopping it stops its children."""

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        if Path(self.argv[0]).name == "gunicorn" and _has_control_socket(self.argv[0]):
            # Its default control socket is one per user: servers of parallel
            # tests (or of the developer) would take it from each other.
            self.argv.insert(1, "--no-control-socket")
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Self:
        if self.log is None:
            self.process = self._spawn(subprocess.DEVNULL)
        else:
            with open(self.log, "ab") as output:  # the child keeps its own handle
                self.process = self._spawn(output)
        try:
            wait_for_port(self.port, self.process, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, output: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        self.process = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


class ServedApp:
    """A WSGI app served by a real threaded HTTP server on 127.0.0.1, in this process.

    Leaving the block waits for requests still being served (event streams end
    once their client is gone), so no stream outlives the test that opened it.
    """

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.active = 0
        self._lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self._counting, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _counting(self, environ: Any, start_response: Any) -> Any:
        with self._lock:
            self.active += 1
        iterable = self.app(environ, start_response)
        try:
            yield from iterable
        finally:
            if hasattr(iterable, "close"):
                iterable.close()
            with self._lock:
                self.active -= 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        deadline = time.monotonic() + 10
        while self.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.active == 0, f"{self.active} request(s) still running after the test"


@dataclass
class Event:
    event: str
    data: Any
    id: str | None = None


class EventStream:
    """A Server-Sent Events client over `http.client`, with a socket timeout so a
    missing event fails the test instead of hanging it."""

    def __init__(
        self,
        base_url: str,
        path: str,
        *,
        last_event_id: str | None = None,
        timeout: float = 10,
    ) -> None:
        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout
        )
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", parts.path.rstrip("/") + path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.comments = 0
        self.last_id: str | None = last_event_id
        self.online: list[str] | None = None  # the presence list as the stream tells it

    def next_event(self) -> Event:
        """The next event; comments (keep-alives) are counted and skipped."""
        fields: dict[str, str] = {}
        while True:
            raw = self.response.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith(":"):
                self.comments += 1
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            elif "data" in fields:
                if "id" in fields:
                    self.last_id = fields["id"]
                event = Event(
                    fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
                )
                self._follow_presence(event)
                return event

    def _follow_presence(self, event: Event) -> None:
        """The whole list opens a stream; later records say what changed."""
        if event.event == "presence":
            self.online = sorted(event.data["online"])
        elif event.event == "presence-change":
            assert self.online is not None, "a change came before the list"
            names = (set(self.online) | set(event.data["joined"])) - set(event.data["left"])
            self.online = sorted(names)

    def next_presence(self) -> dict[str, list[str]]:
        """The presence list after the next presence record, shaped as the first."""
        while self.next_event().event not in ("presence", "presence-change"):
            pass
        assert self.online is not None
        return {"online": self.online}

    def next_of(self, kind: str) -> Event:
        while True:
            event = self.next_event()
            if event.event == kind:
                return event

    def set_timeout(self, seconds: float) -> None:
        """How long a read may wait from now on (the response holds the socket)."""
        self.response.fp.raw._sock.settimeout(seconds)  # type: ignore[union-attr]

    def messages(self, count: int) -> list[Event]:
        return [self.next_of("message") for _ in range(count)]

    def close(self) -> None:
        """Really hang up: the response holds the socket open as long as it lives."""
        self.response.close()
        self.connection.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer(Service):
    """A private `redis-server` on a free port with its own directory; append-only
    with fsync on every write, so a restart gives back everything acknowledged."""

    def __init__(self, directory: Path) -> None:
        port = free_port()
        argv = [
            require_executable("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
        ]
        super().__init__(argv, port, log=directory / "redis.log")

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        with redis.Redis(port=self.port) as client:
            client.flushall()


def close_app(app: Any) -> None:
    """Close what an app opened: its store and, on Redis, its rate-limit client."""
    app.extensions["flaskchat"].close()
    storage = getattr(app.extensions["flaskchat_limiter"], "_storage", None)
    client = getattr(storage, "storage", None)
    if hasattr(client, "close"):
        client.close()


def backend_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for a backend kind: memory, a SQLite file in `tmp_path`, or an
    emptied database of the session's redis-server or Redis Cluster."""
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    if kind == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'chat.sqlite3'}"}[kind]


def call(base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One request as a seed client makes it: JSON in; the status and the reply
    (JSON when it says so, else text) out, error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _reply(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _reply(error)


def _reply(response: Any) -> Any:
    raw = response.read()
    if "json" in response.headers.get("Content-Type", ""):
        return json.loads(raw)
    return raw.decode()


def gunicorn_path() -> str:
    """The gunicorn of this environment, else one on the PATH."""
    local = Path(sys.executable).parent / "gunicorn"
    return str(local) if local.exists() else require_executable("gunicorn")


def gunicorn_service(
    store_url: str,
    log: Path,
    *options: str,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> Service:
    """gunicorn serving flaskchat from a free port on `store_url`, logging to `log`
    and working in its folder. Rate limits are off unless `env` turns them on:
    these tests send faster than any person."""
    port = free_port()
    argv = [gunicorn_path(), "-w", str(workers), "-b", f"127.0.0.1:{port}", *options]
    environment = {"FLASKCHAT_STORE_URL": store_url, "FLASKCHAT_RATELIMIT_ENABLED": "false"}
    return Service(
        [*argv, "flaskchat:create_app()"],
        port,
        env={**environment, **(env or {})},
        cwd=log.parent,
        log=log,
    )


class RedisClusterServer:
    """Six private `redis-server` processes joined as one Redis Cluster: three
    masters, each with one replica, and a short node timeout so that a replica
    takes over from a killed master within seconds."""

    NODE_TIMEOUT_MS = 2000

    def __init__(self, directory: Path, size: int = 6) -> None:
        self.directory = directory
        self.nodes: list[Service] = []
        server = require_executable("redis-server")
        self.cli = require_executable("redis-cli")
        for _ in range(size):
            port = free_port()
            folder = directory / str(port)
            folder.mkdir()
            argv = [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.NODE_TIMEOUT_MS),
                "--cluster-port",  # the bus, else port + 10000, which may be taken
                str(free_port()),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]
            self.nodes.append(Service(argv, port, log=folder / "redis.log"))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def cluster_url(self) -> str:
        """Two seed nodes, as an operator would list them."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> list[Service]:
        return [node for node in self.nodes if node.process is not None]

    def client(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def info(self, port: int) -> dict[str, str]:
        with self.client(port) as client:
            text = client.execute_command("CLUSTER", "INFO")
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).split() if ":" in line)

    def masters(self) -> list[Service]:
        """The running nodes that are masters now, each owning some slots."""
        found = []
        for node in self.running():
            with self.client(node.port) as client:
                if client.execute_command("ROLE")[0] == "master":
                    found.append(node)
        return found

    def wait_until_ok(self, timeout: float = 60, *, whole: bool = True) -> None:
        """Until every running node says `cluster_state:ok` and three masters hold
        slots; `whole`: each master with a replica in sync, too."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._is_ok(whole):
                    return
            except OSError:
                pass
            except Exception as error:  # redis-py's errors, while a node starts or fails over
                if type(error).__module__.split(".")[0] != "redis":
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def master_of(self, key: str) -> Service:
        """The running master that holds `key`'s slot now."""
        for node in self.masters():
            with self.client(node.port) as client:
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                owned = client.execute_command("CLUSTER", "SLOTS")
            if any(r[0] <= slot <= r[1] and int(r[2][1]) == node.port for r in owned):
                return node
        raise LookupError(f"no master holds {key}")

    def _is_ok(self, whole: bool) -> bool:
        if any(self.info(n.port).get("cluster_state") != "ok" for n in self.running()):
            return False
        masters = self.masters()
        return len(masters) == 3 and (not whole or all(self.replicas_of(m) for m in masters))

    def replicas_of(self, master: Service) -> int:
        """Replicas of `master` that are online."""
        with self.client(master.port) as client:
            info = client.info("replication")
        return sum(
            1
            for name, value in info.items()
            if name.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        )

    def flush(self) -> None:
        """Empty every master (replicas follow)."""
        for node in self.masters():
            with self.client(node.port) as client:
                client.flushall()

    def restore(self) -> None:
        """Start again any node a test killed (it comes back as a replica) and
        wait until the cluster is whole."""
        stopped = [node for node in self.nodes if node.process is None]
        for node in stopped:
            node.start()
        if stopped:
            self.wait_until_ok(whole=True)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)


def script_output(script: str, *args: str, timeout: float = 60) -> Any:
    """Run a Python snippet in a process of its own (gevent patches a whole
    process) and return the JSON it prints."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout
    return json.loads(out)
