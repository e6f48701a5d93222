"""gunicorn with the shipped config writes one access-log line per request, whatever
the path holds, and never a room id: logs are read by more people than rooms are."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support import Service, call, gunicorn_service

pytestmark = pytest.mark.system

# Decoded, this path ends the line, then writes a line of its own; it also holds a
# line separator (U+2028) and a right-to-left override (U+202E).
FORGED_TAIL = (
    "%0d%0a203.0.113.9%20[01/Jan/2026:00:00:00%20+0000]%20%22GET%20/admin%20HTTP/1.1%22"
    "%20200%20-%200.1s%E2%80%A8%E2%80%AEFORGED"
)


def raw_get(port: int, target: str) -> bytes:
    """Send a request line exactly as given, as no HTTP library would."""
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode("ascii"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def room_log_id(roomid: str, cwd: Path) -> str:
    """What an operator runs to find a room's lines."""
    flask = str(Path(sys.executable).parent / "flask")
    result = subprocess.run(
        [flask, "--app", "flaskchat", "room", "log-id", roomid],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=cwd,
        env={**os.environ, "FLASKCHAT_STORE_URL": "memory://"},
    )
    return result.stdout.strip()


def test_access_log_cannot_be_forged_and_shows_no_room_id(tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    server: Service = gunicorn_service(
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        tmp_path / "error.log",
        "-c",
        "python:flaskchat.gunicorn_config",
        "--access-logfile",
        str(access_log),
    )
    server.start()
    try:
        status, body = call(server.url, "/createroom", {"alias": "logged"})
        assert status == 200, body
        roomid = body["roomid"]
        status, _ = call(server.url, f"/{roomid}/login", {"username": "al", "password": "x" * 8})
        assert status == 401
        reply = raw_get(server.port, f"/{roomid}/login{FORGED_TAIL}")
        assert reply.startswith(b"HTTP/1.1 404 "), reply[:200]
        redirect = raw_get(server.port, f"/{roomid}")
        assert redirect.startswith(b"HTTP/1.1 308 "), redirect[:200]
    finally:
        server.stop()

    raw = access_log.read_bytes()
    assert b"\r" not in raw
    text = raw.decode("utf-8")
    lines = text.splitlines()
    assert len(lines) == 4, text  # createroom, login, the forged path, the redirect
    assert sum("FORGED" in line for line in lines) == 1
    assert not any(line.startswith("203.0.113.9") for line in lines), text
    forged = next(line for line in lines if "FORGED" in line)
    assert "\\x0d\\x0a203.0.113.9" in forged
    assert "\\u2028\\u202eFORGED" in forged
    assert not re.search("[\u2028\u2029\u202a-\u202e\u2066-\u2069]", text)

    short = room_log_id(roomid, tmp_path)
    assert re.fullmatch(r"r:[0-9a-f]{6}", short), short
    assert roomid not in text
    assert f'"POST /{short}/login HTTP/1.1" 401 ' in text
    assert f'"GET /{short} HTTP/1.1" 308 ' in text

    errors = server.logs()
    assert f"failed login: room={short} " in errors, errors
    assert roomid not in errors
