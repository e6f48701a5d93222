"""Crash safety and slow clients, with real processes: every message that got a
200 survives a SIGKILL of gunicorn (or of Redis) exactly once, the SQLite file
stays intact, and a client that dribbles its headers is cut off."""

from __future__ import annotations

import http.client
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flaskchat import RoomStore

from support import RedisServer, Service, gunicorn_service
from support import call as support_call

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"


def server(tmp_path: Path, store_url: str, *extra: str) -> Service:
    return gunicorn_service(store_url, tmp_path / "gunicorn.log", "-k", "gevent", *extra)


def call(base: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """A request that may meet a dying server: no reply at all counts as status 0."""
    try:
        return support_call(base, path, body)
    except (OSError, http.client.HTTPException):
        return 0, None


def start_senders(
    base: str, roomid: str, users: dict[str, str], stop: threading.Event
) -> tuple[set[str], list[threading.Thread]]:
    """Several clients send numbered messages until `stop`; the set fills with
    the texts that got a 200."""
    acknowledged: set[str] = set()

    def client(name: str) -> None:
        n = 0
        while not stop.is_set():
            text = f"{name} {n}"
            status, _ = call(
                base,
                f"/{roomid}/message",
                {"username": name, "token": users[name], "message": text},
            )
            if status == 200:
                acknowledged.add(text)
            n += 1

    threads = [threading.Thread(target=client, args=(name,)) for name in users]
    for thread in threads:
        thread.start()
    return acknowledged, threads


def crash_while_sending(
    service: Service, store_url: str, kill: Callable[[], None], revive: Callable[[], None]
) -> tuple[RoomStore, str, set[str]]:
    store = RoomStore.from_url(store_url, hash_method="scrypt:1024:8:1")
    roomid = store.create_room("crash")
    users = {}
    for name in ("ann", "ben", "cat", "dan"):
        store.register(roomid, name, PASSWORD)
        users[name] = store.login(roomid, name, PASSWORD)
    stop = threading.Event()
    acknowledged, threads = start_senders(service.url, roomid, users, stop)
    deadline = time.monotonic() + 30  # a busy machine may be slow to get going
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    kill()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(10)
    revive()
    assert len(acknowledged) > 20, "the clients barely got started"
    return store, roomid, acknowledged


def stored_texts(store: RoomStore, roomid: str) -> list[str]:
    texts: list[str] = []
    page = store.messages(roomid, limit=200)
    texts[:0] = [m.text for m in page.messages]
    while page.more:
        page = store.messages(roomid, before=page.messages[0].id, limit=200)
        texts[:0] = [m.text for m in page.messages]
    return texts


def test_sigkill_of_gunicorn_loses_and_doubles_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store_url = f"sqlite:///{path}"
    service = server(tmp_path, store_url).start()

    def kill() -> None:
        assert service.process is not None
        service.stop(signal.SIGKILL)

    store, roomid, acknowledged = crash_while_sending(service, store_url, kill, service.start)
    try:
        texts = stored_texts(store, roomid)
        assert len(texts) == len(set(texts)), "a message was stored twice"
        assert acknowledged <= set(texts), sorted(acknowledged - set(texts))[:5]
        # Each client's messages are stored in the order it sent them.
        for name in ("ann", "ben", "cat", "dan"):
            numbers = [int(t.split()[1]) for t in texts if t.startswith(name)]
            assert numbers == sorted(numbers)
        store.close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        status, body = call(service.url, "/createroom", {"alias": "after the crash"})
        assert status == 200 and body["roomid"]
    finally:
        service.stop()


def test_sigkill_of_redis_loses_nothing_acknowledged(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    redis = RedisServer(directory).start()  # appendonly yes, appendfsync always
    service = server(tmp_path, redis.redis_url).start()
    try:
        store, roomid, acknowledged = crash_while_sending(
            service, redis.redis_url, lambda: redis.stop(signal.SIGKILL), redis.start
        )
        texts = stored_texts(store, roomid)
        assert len(texts) == len(set(texts))
        assert acknowledged <= set(texts), sorted(acknowledged - set(texts))[:5]
        store.close()
    finally:
        service.stop()
        redis.stop()


def test_a_client_that_dribbles_its_headers_is_cut_off(tmp_path: Path) -> None:
    """The recommended settings drop a request whose headers take longer than the
    keep-alive time (5 s) to arrive, while other clients are served normally."""
    service = server(
        tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", "-c", "python:flaskchat.gunicorn_config"
    ).start()
    try:
        slow = socket.create_connection(("127.0.0.1", service.port), timeout=30)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 25:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed_after = time.monotonic() - started
                break
            slow.settimeout(1.0)
            try:
                if slow.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            status, _ = call(service.url, "/createroom", {"alias": "others still served"})
            assert status == 200
        slow.close()
        assert closed_after is not None, "the slow client was never cut off"
        assert closed_after < 15
    finally:
        service.stop()
