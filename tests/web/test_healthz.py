"""`/healthz` checks that the store can write, not only that it answers: a store
that serves reads but refuses writes is not healthy."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from flaskchat import create_app
from flaskchat.backends.redis import HEALTH_KEY

from actions import ChatActions
from support import RedisServer, close_app, free_port


def heartbeat(store_url: str) -> float:
    """When the store last took a health check's write, in seconds (any unit that grows)."""
    if store_url.startswith("sqlite:///"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            (beat_us,) = conn.execute("SELECT beat_us FROM heartbeat").fetchone()
        conn.close()
        return float(beat_us) / 1e6
    with redis.Redis.from_url(store_url) as client:
        ttl_ms = client.pttl(HEALTH_KEY)
    assert 0 < ttl_ms <= 60_000  # a health key never outlives the checks by long
    return time.time() - 60 + ttl_ms / 1000


def test_healthz_commits_a_write_each_time(client: FlaskClient, store_url: str) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    first = heartbeat(store_url)
    time.sleep(0.01)
    response = client.get("/healthz")
    assert (response.status_code, response.json) == (200, {"status": "ok"})
    assert heartbeat(store_url) > first


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, whose settings it may change."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_app(private_redis: RedisServer) -> Iterator[Flask]:
    app = create_app(
        {
            "TESTING": True,
            "STORE_URL": private_redis.redis_url,
            "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1",
            "RATELIMIT_ENABLED": False,
        }
    )
    yield app
    close_app(app)


# How a Redis server comes to refuse writes, and how it is put right.
REFUSALS = {
    "a read-only replica": (["REPLICAOF", "127.0.0.1", "PORT"], ["REPLICAOF", "NO", "ONE"]),
    "min-replicas-to-write": (
        ["CONFIG", "SET", "min-replicas-to-write", "1"],
        ["CONFIG", "SET", "min-replicas-to-write", "0"],
    ),
    "maxmemory": (["CONFIG", "SET", "maxmemory", "1"], ["CONFIG", "SET", "maxmemory", "0"]),
}


@pytest.mark.parametrize("refusal", REFUSALS)
def test_healthz_and_writes_answer_503_while_redis_refuses_writes(
    refusal: str, private_redis: RedisServer, redis_app: Flask
) -> None:
    chat = ChatActions(redis_app.test_client())
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    refuse, restore = REFUSALS[refusal]
    nowhere = str(free_port())  # a master that never answers
    with redis.Redis(port=private_redis.port) as admin:
        admin.execute_command(*[nowhere if part == "PORT" else part for part in refuse])
        try:
            health = chat.client.get("/healthz")
            assert (health.status_code, health.json["status"]) == (503, "unavailable")
            sent = chat.say(roomid, "alice", token, "refused")
            assert sent.status_code == 503 and sent.json["succeeded"] is False
            assert chat.client.get(f"/{roomid}/get_conversation").status_code == 200
        finally:
            admin.execute_command(*restore)
    assert chat.client.get("/healthz").json == {"status": "ok"}
    assert chat.say(roomid, "alice", token, "accepted").status_code == 200
