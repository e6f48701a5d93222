"""Several servers on one real redis-server: one set of rooms, live delivery
between servers, clean 503s while Redis is down, nothing acknowledged lost
across a Redis restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from flaskchat import RoomStore, create_app

from support import (
    EventStream,
    RedisServer,
    Service,
    call,
    close_app,
    gunicorn_service,
)

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, so it can be stopped and restarted."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


def gunicorn_on(redis: RedisServer, tmp_path: Path, name: str) -> Service:
    return gunicorn_service(
        redis.redis_url,
        tmp_path / f"{name}.log",
        *("-k", "gevent", "--graceful-timeout", "2"),
        env={"FLASKCHAT_SSE_KEEPALIVE": "1"},
    )


def test_two_servers_on_one_redis_are_one_chat_and_survive_a_redis_restart(
    redis: RedisServer, tmp_path: Path
) -> None:
    one = gunicorn_on(redis, tmp_path, "one").start()
    two = gunicorn_on(redis, tmp_path, "two").start()
    try:
        roomid = call(one.url, "/createroom", {"alias": "scaled"})[1]["roomid"]
        assert (
            call(one.url, f"/{roomid}/register", {"username": "alice", "password": PASSWORD})[0]
            == 200
        )
        status, body = call(
            two.url, f"/{roomid}/login", {"username": "alice", "password": PASSWORD}
        )
        assert status == 200, body
        token = body["token"]
        dup = call(two.url, f"/{roomid}/register", {"username": "ALICE", "password": PASSWORD})
        assert dup[0] == 409  # registration is atomic across servers

        with EventStream(one.url, f"/{roomid}/events") as stream:
            stream.next_event()
            posted = []
            for n in range(10):
                server = (two, one)[n % 2]
                status, body = call(
                    server.url,
                    f"/{roomid}/message",
                    {"username": "alice", "token": token, "message": f"m{n}", "client_id": f"c{n}"},
                )
                assert status == 200
                posted.append(body["id"])
            # A retry through the other server is stored once.
            retry = call(
                one.url,
                f"/{roomid}/message",
                {"username": "alice", "token": token, "message": "m9", "client_id": "c9"},
            )
            assert retry[1]["id"] == posted[-1]
            assert [e.id for e in stream.messages(10)] == posted

        redis.stop()
        down = call(one.url, f"/{roomid}/get_conversation")
        assert down[0] == 503
        assert down[1]["succeeded"] is False and "unavailable" in down[1]["explanation"]
        assert call(two.url, "/healthz")[0] == 503
        redis.start()

        deadline = time.monotonic() + 10
        while call(two.url, "/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        conversation = call(two.url, f"/{roomid}/get_conversation")[1]
        assert [line.rsplit(" ", 1)[1] for line in conversation] == [f"m{n}" for n in range(10)]
        status, _ = call(
            one.url,
            f"/{roomid}/message",
            {"username": "alice", "token": token, "message": "after restart"},
        )
        assert status == 200  # the old token is still good
    finally:
        two.stop()
        one.stop()


def test_a_store_recovers_by_itself_when_redis_comes_back(redis: RedisServer) -> None:
    app: Flask = create_app({"TESTING": True, "STORE_URL": redis.redis_url})
    client = app.test_client()
    roomid = client.post("/createroom", json={"alias": "flaky"}).json["roomid"]
    redis.stop()
    for path, kwargs in [
        ("/createroom", {"json": {"alias": "x"}}),
        (f"/{roomid}/register", {"json": {"username": "bob", "password": PASSWORD}}),
    ]:
        response = client.post(path, **kwargs)
        assert response.status_code == 503
        assert response.json["succeeded"] is False
    assert client.get("/healthz").json == {
        "succeeded": False,
        "status": "unavailable",
        "explanation": "The chat store is unavailable. Please try again shortly.",
    }
    redis.start()
    assert (
        client.post(
            f"/{roomid}/register", json={"username": "bob", "password": PASSWORD}
        ).status_code
        == 200
    )
    store: RoomStore = app.extensions["flaskchat"]
    assert set(store.snapshot()[roomid]["users"]) == {"bob"}
    close_app(app)
