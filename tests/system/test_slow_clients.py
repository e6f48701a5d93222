"""Slow and greedy clients against real gunicorn with the shipped config: a body
that trickles in is answered 408 and its connection closed; one address cannot
hold more than its share of connections while another is still served, unless
it is a trusted proxy; and malformed or oversized chunked bodies are 400 and 413
in each endpoint's reply shape, never a 500."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import Service, call, gunicorn_service

pytestmark = pytest.mark.system

SHIPPED = ("-c", "python:flaskchat.gunicorn_config")
# Another client: Linux answers on all of 127.0.0.0/8.
OTHER_IP = "127.0.0.2"


def shipped_server(tmp_path: Path, workers: int = 1, **env: str) -> Service:
    """gunicorn with the shipped config; one worker, since the caps are per worker."""
    environment = {"FORWARDED_ALLOW_IPS": "127.0.0.1", **env}
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    return gunicorn_service(
        store_url, tmp_path / "gunicorn.log", *SHIPPED, workers=workers, env=environment
    )


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def get(
    port: int, path: str, source: str = "127.0.0.1"
) -> tuple[int, Any, http.client.HTTPConnection]:
    """GET on a kept-alive connection from `source`: the status, the JSON reply and
    the connection, still open unless the server closed it."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", int(port), timeout=10, source_address=(source, 0)
    )
    connection.request("GET", path)
    response = connection.getresponse()
    reply = json.loads(response.read())
    if response.status == 429:
        assert response.getheader("Retry-After")
    return response.status, reply, connection


def open_stream(port: int, roomid: str, source: str = "127.0.0.1") -> socket.socket:
    """An event stream from `source`, once its first event has arrived."""
    sock = connect(port, source)
    sock.sendall(
        f"GET /{roomid}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"event: presence" not in received:
        piece = sock.recv(4096)
        assert piece, received
        received += piece
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def create_room(base: str) -> str:
    status, reply = call(base, "/createroom", {"alias": "slow clients"})
    assert status == 200, reply
    return str(reply["roomid"])


def test_a_body_that_trickles_in_is_answered_408_and_closed(tmp_path: Path) -> None:
    """One byte every half second never completes a 100-byte body within the
    1 s deadline: the client gets a 408 and the connection closes, while others
    are served."""
    server = shipped_server(tmp_path, FLASKCHAT_REQUEST_BODY_TIMEOUT="1").start()
    try:
        slow = connect(server.port)
        slow.sendall(
            b"POST /createroom HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        received = b""
        closed_after = None
        slow.settimeout(0.5)
        while time.monotonic() - started < 20:
            try:
                slow.sendall(b" ")
                piece = slow.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # reset once closed
                piece = b""
            if not piece:
                closed_after = time.monotonic() - started
                break
            received += piece
        slow.close()
        assert closed_after is not None, "the slow body kept its connection"
        assert closed_after < 12
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), received
        reply = json.loads(body)
        assert reply["succeeded"] is False and reply["roomid"] is None
        assert call(server.url, "/healthz")[0] == 200
    finally:
        server.stop()


def test_one_address_cannot_hold_more_than_its_connections(tmp_path: Path) -> None:
    server = shipped_server(
        tmp_path, FLASKCHAT_MAX_CONNECTIONS_PER_IP="3", FLASKCHAT_MAX_STREAMS_PER_IP="3"
    ).start()
    streams: list[socket.socket] = []
    try:
        roomid = create_room(server.url)
        streams = [open_stream(server.port, roomid) for _ in range(3)]
        status, reply, connection = get(server.port, "/healthz")
        connection.close()
        assert status == 429
        assert reply["succeeded"] is False and "connections" in reply["explanation"]
        status, reply, connection = get(server.port, "/healthz", source=OTHER_IP)
        connection.close()
        assert status == 200, reply

        for stream in streams:
            stream.close()
        deadline = time.monotonic() + 30
        while True:  # the slots come back once the server sees the streams gone
            status, _, connection = get(server.port, "/healthz")
            connection.close()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
    finally:
        for stream in streams:
            stream.close()
        server.stop()


def test_a_trusted_proxy_is_not_capped_as_one_client(tmp_path: Path) -> None:
    """Behind a proxy, each connection from it is a different client (nginx's
    `limit_conn` caps them there); other addresses are still capped."""
    server = shipped_server(
        tmp_path,
        FLASKCHAT_TRUSTED_PROXIES="1",
        FLASKCHAT_MAX_CONNECTIONS_PER_IP="2",
        FLASKCHAT_MAX_STREAMS_PER_IP="2",
    ).start()
    held: list[Any] = []
    try:
        roomid = create_room(server.url)
        held += [open_stream(server.port, roomid) for _ in range(2)]
        for _ in range(3):
            status, _, connection = get(server.port, "/healthz")
            held.append(connection)
            assert status == 200

        held += [open_stream(server.port, roomid, OTHER_IP) for _ in range(2)]
        status, _, connection = get(server.port, "/healthz", source=OTHER_IP)
        connection.close()
        assert status == 429
    finally:
        for connection in held:
            connection.close()
        server.stop()


# Each endpoint, the body it takes, and the extra keys of its failure replies.
ENDPOINTS = [
    pytest.param(
        "/createroom", {"alias": "chunked"}, {"roomid": None, "owner_key": None}, id="createroom"
    ),
    pytest.param(
        "/{roomid}/register",
        {"username": "bob", "password": "correct horse battery"},
        {},
        id="register",
    ),
    pytest.param("/{roomid}/logout", {"username": "al", "token": "t" * 43}, {}, id="logout"),
    pytest.param(
        "/{roomid}/ticket", {"username": "al", "token": "t" * 43}, {"ticket": None}, id="ticket"
    ),
]


def chunked(data: bytes, size: int = 4096) -> bytes:
    """`data` in Transfer-Encoding: chunked framing, `size` bytes a chunk."""
    pieces = (data[i : i + size] for i in range(0, len(data), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def post_chunked(port: int, path: str, body: bytes) -> tuple[int, Any]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    with connect(port) as sock:
        sock.sendall(head.encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module", params=["true", "false"], ids=["limits-on", "limits-off"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, str]]:
    """Two workers with the shipped config, and a room."""
    server = shipped_server(
        tmp_path_factory.mktemp("chunked"), workers=2, FLASKCHAT_RATELIMIT_ENABLED=request.param
    ).start()
    try:
        yield server, create_room(server.url)
    finally:
        server.stop()


@pytest.mark.parametrize(("path", "body", "extras"), ENDPOINTS)
def test_chunked_bodies_through_gunicorn(
    served: tuple[Service, str], path: str, body: dict[str, str], extras: dict[str, Any]
) -> None:
    server, roomid = served
    path = path.format(roomid=roomid)

    status, reply = post_chunked(server.port, path, b"zz\r\nabc\r\n0\r\n\r\n")
    assert status == 400
    assert reply == {"succeeded": False, "explanation": reply["explanation"], **extras}

    oversized = json.dumps({**body, "padding": "x" * (80 * 1024)}).encode()
    status, reply = post_chunked(server.port, path, chunked(oversized))
    assert status == 413
    assert reply == {"succeeded": False, "explanation": "The request is too large.", **extras}

    status, reply = post_chunked(server.port, path, chunked(json.dumps(body).encode(), 7))
    assert status != 400 and status != 413 and status < 500, reply
