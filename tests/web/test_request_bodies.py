"""Request bodies as a real server delivers them: a malformed chunked body is a
400 and an oversized one a 413, in each endpoint's reply shape (never a 500),
with rate limits on and off; a body that stops arriving gets 408. Served by
werkzeug's own HTTP server over raw sockets, since the test client never
de-chunks anything."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flaskchat import create_app

from actions import ChatActions
from support import ServedApp

ALICE = {"username": "alice", "token": "not a real token but well formed"}

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
    pytest.param("/{roomid}/logout", ALICE, {}, id="logout"),
    pytest.param("/{roomid}/ticket", ALICE, {"ticket": None}, id="ticket"),
]


def chunked(data: bytes, size: int = 4096) -> bytes:
    """`data` in Transfer-Encoding: chunked framing, `size` bytes a chunk."""
    pieces = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


def post_raw(port: int, path: str, body: bytes, *, headers: str = "") -> tuple[int, Any]:
    """POST `body` bytes as they are, chunked unless `headers` frames them otherwise;
    the status and the JSON reply."""
    framing = headers or "Transfer-Encoding: chunked\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head.encode() + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


@pytest.fixture(params=[True, False], ids=["limits-on", "limits-off"])
def app_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"RATELIMIT_ENABLED": request.param}


@pytest.fixture
def served(app: Flask) -> Iterator[ServedApp]:
    with ServedApp(app) as served:
        yield served


@pytest.fixture
def roomid(app: Flask) -> str:
    return str(ChatActions(app.test_client()).create_room())  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "body", "extras"), ENDPOINTS)
def test_a_malformed_chunk_size_is_a_400(
    served: ServedApp, roomid: str, path: str, body: dict[str, str], extras: dict[str, Any]
) -> None:
    status, reply = post_raw(served.port, path.format(roomid=roomid), b"zz\r\nabc\r\n0\r\n\r\n")
    assert status == 400
    assert reply == {"succeeded": False, "explanation": reply["explanation"], **extras}
    assert "body" in reply["explanation"]


@pytest.mark.parametrize(("path", "body", "extras"), ENDPOINTS)
def test_a_chunked_body_over_the_limit_is_a_413(
    served: ServedApp, roomid: str, path: str, body: dict[str, str], extras: dict[str, Any]
) -> None:
    oversized = json.dumps({**body, "padding": "x" * (80 * 1024)}).encode()
    status, reply = post_raw(served.port, path.format(roomid=roomid), chunked(oversized))
    assert status == 413
    assert reply == {"succeeded": False, "explanation": "The request is too large.", **extras}


@pytest.mark.parametrize(("path", "body", "extras"), ENDPOINTS[:2])
def test_a_well_formed_chunked_body_is_read(
    served: ServedApp, roomid: str, path: str, body: dict[str, str], extras: dict[str, Any]
) -> None:
    status, reply = post_raw(
        served.port, path.format(roomid=roomid), chunked(json.dumps(body).encode(), 5)
    )
    assert status == 200, reply


@pytest.mark.parametrize("app_config", [{"REQUEST_BODY_TIMEOUT": 1}])
def test_a_body_that_stops_arriving_gets_a_408(served: ServedApp) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=15) as sock:
        sock.sendall(
            b"POST /createroom HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        response = http.client.HTTPResponse(sock)
        response.begin()
        waited = time.monotonic() - started
        assert response.status == 408
        reply = json.loads(response.read())
    assert reply == {
        "succeeded": False,
        "explanation": reply["explanation"],
        "roomid": None,
        "owner_key": None,
    }
    assert "too long" in reply["explanation"]
    assert waited < 10


def test_the_stream_cap_must_fit_in_the_connection_cap() -> None:
    """An event stream is one of a client's connections, so a stream cap above the
    connection cap could never be reached: the app refuses to start with it."""
    config = {"TESTING": True, "STORE_URL": "memory://"}
    with pytest.raises(ValueError, match="MAX_STREAMS_PER_IP"):
        create_app({**config, "MAX_STREAMS_PER_IP": 9, "MAX_CONNECTIONS_PER_IP": 8})
    create_app({**config, "MAX_STREAMS_PER_IP": 8, "MAX_CONNECTIONS_PER_IP": 8})
