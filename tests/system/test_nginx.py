"""The shipped nginx server block (deploy/nginx.conf), really run by Debian's nginx in
front of gunicorn with the shipped config: event streams arrive at once, rate limits
count each client behind the proxy and no forged X-Forwarded-* header moves them,
nginx reads whole requests before gunicorn sees them and answers its own refusals
in the app's JSON shape, and the file serves HTTPS with HTTP/2 as shipped. The
systemd unit (deploy/flaskchat.service) runs what the server block expects."""

from __future__ import annotations

import contextlib
import http.client
import json
import shlex
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nginx_proxy import SHIPPED, behind_nginx
from support import EventStream, call, require_executable

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"
UNIT = SHIPPED.with_name("flaskchat.service")


def send(
    base: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, Any]:
    """One request from the loopback address `source`, as another client would send
    it: the status, the response and its reply (parsed when JSON)."""
    port = int(base.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, response, json.loads(raw) if is_json else raw.decode()


def join(base: str, alias: str) -> tuple[str, str]:
    """Create a room, register alice and log her in: the room id and her token."""
    status, room = call(base, "/createroom", {"alias": alias})
    assert status == 200, room
    roomid = room["roomid"]
    user = {"username": "alice", "password": PASSWORD}
    assert call(base, f"/{roomid}/register", user)[0] == 200
    status, login = call(base, f"/{roomid}/login", user)
    assert status == 200, login
    return roomid, login["token"]


def test_a_message_reaches_an_event_stream_through_nginx_within_a_second(
    tmp_path: Path, store_url: str
) -> None:
    with behind_nginx(tmp_path, store_url) as proxied:
        roomid, token = join(proxied.url, "streamed")
        with EventStream(proxied.url, f"/{roomid}/events", timeout=10) as stream:
            assert stream.status == 200
            assert stream.response.getheader("Content-Type", "").startswith("text/event-stream")
            stream.next_of("presence")
            for n in range(3):  # two workers: posts and the stream land on either
                message = {"username": "alice", "token": token, "message": f"m{n}"}
                assert call(proxied.url, f"/{roomid}/message", message)[0] == 200
                posted = time.monotonic()
                event = stream.next_of("message")
                assert event.data["text"] == f"m{n}"
                assert time.monotonic() - posted < 1.0


FORGED = {
    "X-Forwarded-For": "1.2.3.4",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Protocol": "ssl",
    "SCRIPT_NAME": "/evil",
}


def test_rate_limits_count_each_client_behind_nginx_and_forged_headers_change_nothing(
    tmp_path: Path, store_url: str
) -> None:
    env = {
        "FLASKCHAT_RATELIMIT_ENABLED": "true",
        "FLASKCHAT_RATELIMIT_CREATEROOM": "2/minute",
        "FLASKCHAT_TRUSTED_HOSTS": '["127.0.0.1"]',
    }
    with behind_nginx(tmp_path, store_url, env=env) as proxied:

        def create(source: str, headers: dict[str, str] | None = None) -> int:
            status, response, reply = send(
                proxied.url, "POST", "/createroom", {"alias": "x"}, source=source, headers=headers
            )
            if status == 429:  # the app's refusal, not nginx's
                assert reply["roomid"] is None and response.getheader("Retry-After"), reply
            return status

        assert [create("127.0.0.2") for _ in range(3)] == [200, 200, 429]
        assert [create("127.0.0.3") for _ in range(3)] == [200, 200, 429]
        assert [create("127.0.0.4", FORGED) for _ in range(3)] == [200, 200, 429]
        # Claiming another address gives no fresh budget.
        assert create("127.0.0.4", {"X-Forwarded-For": "5.6.7.8"}) == 429
        assert create("127.0.0.4", {"X-Forwarded-For": "127.0.0.5"}) == 429

        seen = [line.split()[1:7] for line in proxied.access_log(" /createroom ", 11)]
        addresses = Counter(address for address, *_ in seen)
        assert addresses == {"127.0.0.2": 3, "127.0.0.3": 3, "127.0.0.4": 5}
        # What the app saw: its own scheme, host and mount point, whatever was sent.
        assert {tuple(rest) for _, *rest in seen} == {
            ("http", "127.0.0.1", "POST", "/createroom", "HTTP/1.1")
        }


def trickle(port: int, path: str, body: bytes, pause: float) -> bytes:
    """Send a request whose body arrives in three parts, `pause` seconds apart
    (or until the server hangs up); the raw reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        third = len(body) // 3
        try:
            for part in (body[:third], body[third : 2 * third], body[2 * third :]):
                time.sleep(pause)
                sock.sendall(part)
        except OSError:  # refused early and closed: read the refusal
            pass
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(65536):
                reply += piece
    return reply


def test_nginx_reads_whole_requests_and_answers_its_own_refusals_in_json(
    tmp_path: Path,
) -> None:
    """A body trickling in for longer than the app's deadline reaches gunicorn
    complete (sent straight to gunicorn, it is refused); nginx's own 413, its
    redirect to HTTPS and its answer while gunicorn is down are what a client
    of the app expects."""
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    env = {"FLASKCHAT_REQUEST_BODY_TIMEOUT": "1"}
    with behind_nginx(tmp_path, store_url, env=env) as proxied:
        body = json.dumps({"alias": "a slow client's room"}).encode()
        direct = trickle(proxied.gunicorn.port, "/createroom", body, pause=0.5)
        assert direct.startswith(b"HTTP/1.1 408"), direct
        proxied_reply = trickle(proxied.nginx.port, "/createroom", body, pause=0.5)
        assert proxied_reply.startswith(b"HTTP/1.1 200"), proxied_reply

        too_large = {"alias": "x" * 200_000}
        status, response, reply = send(proxied.url, "POST", "/createroom", too_large)
        assert (status, reply["succeeded"]) == (413, False), reply
        assert response.getheader("Content-Type") == "application/json"

        status, response, _ = send(f"http://127.0.0.1:{proxied.redirect_port}", "GET", "/a?b=c")
        assert status == 301
        assert response.getheader("Location") == "https://127.0.0.1/a?b=c"

        proxied.gunicorn.stop(signal.SIGINT)  # at once, not after its graceful timeout
        status, response, reply = send(proxied.url, "GET", "/healthz")
        assert (status, reply["succeeded"]) == (503, False), reply
        assert response.getheader("Retry-After") == "10"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            require_executable("openssl"),
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_the_server_block_serves_https_and_http2_as_shipped(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    with behind_nginx(tmp_path, store_url, certificate=certificate) as proxied:
        context = ssl.create_default_context(cafile=str(certificate[0]))
        context.check_hostname = False
        context.set_alpn_protocols(["h2", "http/1.1"])
        port = proxied.nginx.port
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            assert tls.selected_alpn_protocol() == "h2"

        context.set_alpn_protocols(["http/1.1"])
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})
        assert response.getheader("Strict-Transport-Security") == "max-age=31536000"
        connection.close()
        [line] = proxied.access_log(" /healthz ")
        assert line.split()[1:4] == ["127.0.0.1", "https", "127.0.0.1"]


def unit_settings() -> dict[str, list[str]]:
    """The shipped unit's settings, each with every value it is given."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


def test_the_service_runs_what_the_server_block_expects() -> None:
    """The unit starts the shipped gunicorn config where nginx looks for it, trusts
    exactly that proxy, keeps the database in its state directory and reloads
    gracefully (gunicorn restarts its workers on HUP)."""
    unit = unit_settings()
    environment = dict(value.partition("=")[::2] for value in unit["Environment"])
    assert f"server {environment['FLASKCHAT_BIND']};" in SHIPPED.read_text()
    assert environment["FLASKCHAT_TRUSTED_PROXIES"] == "1"
    [state] = unit["StateDirectory"]
    assert environment["FLASKCHAT_STORE_URL"].startswith(f"sqlite:////var/lib/{state}/")
    [start] = unit["ExecStart"]
    assert shlex.split(start)[1:] == [
        "-c",
        "python:flaskchat.gunicorn_config",
        "flaskchat:create_app()",
    ]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["User"] == ["flaskchat"]
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert unit[hardening] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
