"""Credentials and TLS come from the store URL, against a real redis-server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskchat import RoomStore
from flaskchat.errors import StoreUnavailable

from support import Service, free_port, require_executable


def _server(directory: Path, *options: str, port: int | None = None) -> Service:
    port = port or free_port()
    argv = [
        require_executable("redis-server"),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--protected-mode",
        "no",
        *options,
    ]
    return Service(argv, port, log=directory / "redis.log")


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[Service]:
    port = free_port()
    server = _server(tmp_path, "--port", str(port), "--requirepass", "s3cret pass", port=port)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Service, Path]]:
    """A test CA and a certificate for 127.0.0.1, made with openssl; the server
    listens with TLS only."""
    openssl = require_executable("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    port = free_port()
    server = _server(
        tmp_path,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(tmp_path / "server.crt"),
        "--tls-key-file",
        str(tmp_path / "server.key"),
        "--tls-ca-cert-file",
        str(tmp_path / "ca.crt"),
        "--tls-auth-clients",
        "no",
        port=port,
    )
    server.start()
    yield server, tmp_path / "ca.crt"
    server.stop()


def _round_trip(url: str) -> None:
    store = RoomStore.from_url(url)
    try:
        roomid = store.create_room("private")
        store.register(roomid, "alice", "correct horse battery")
        token = store.login(roomid, "alice", "correct horse battery")
        store.post_message(roomid, "alice", token, "over the wire")
        assert store.conversation(roomid)[-1].endswith("<alice> over the wire")
    finally:
        store.close()


def test_a_password_in_the_url_opens_the_store(password_server: Service) -> None:
    _round_trip(f"redis://:s3cret%20pass@127.0.0.1:{password_server.port}/0")


@pytest.mark.parametrize("auth", ["", ":wrong@"])
def test_a_missing_or_wrong_password_is_one_clear_line(password_server: Service, auth: str) -> None:
    store = RoomStore.from_url(f"redis://{auth}127.0.0.1:{password_server.port}/0")
    try:
        with pytest.raises(StoreUnavailable, match="refused the user name or password") as caught:
            store.create_room("locked")
        assert "\n" not in str(caught.value)
    finally:
        store.close()


def test_tls_with_the_ca_from_the_url(tls_server: tuple[Service, Path]) -> None:
    server, ca = tls_server
    _round_trip(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}")
