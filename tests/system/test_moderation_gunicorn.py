"""Moderation holds across processes: a message deleted, a member banned or a
room deleted through one worker (SQLite) or one server (Redis) is so for every
other one within 2 s, and their open streams hear of it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import EventStream, Service, call, gunicorn_service

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite-two-workers", "redis-two-servers"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Service]]:
    """Urls that reach different processes on one store: the two workers of one
    server take connections in turn, so several tries reach both; on Redis two
    servers of one worker each."""
    if request.param.startswith("redis"):
        store_url = str(request.getfixturevalue("redis_url"))
        started = [
            gunicorn_service(store_url, tmp_path / f"{n}.log", "-k", "gevent", workers=1).start()
            for n in range(2)
        ]
    else:
        store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
        started = [gunicorn_service(store_url, tmp_path / "one.log", "-k", "gevent").start()]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_deletion_ban_and_room_deletion_reach_every_process(servers: list[Service]) -> None:
    first, last = servers[0].url, servers[-1].url
    status, room = call(first, "/createroom", {"alias": "moderated"})
    assert status == 200
    roomid, key = room["roomid"], room["owner_key"]
    tokens = {}
    for name in ("alice", "bob"):
        call(first, f"/{roomid}/register", {"username": name, "password": PASSWORD})
        tokens[name] = call(last, f"/{roomid}/login", {"username": name, "password": PASSWORD})[1][
            "token"
        ]
    said = {
        name: call(
            first,
            f"/{roomid}/message",
            {"username": name, "token": tokens[name], "message": f"{name} speaks"},
        )[1]["id"]
        for name in ("alice", "bob")
    }
    # Streams on every process, each having read the room once (and cached it).
    streams = [EventStream(url, f"/{roomid}/events") for url in (first, first, last, last)]
    try:
        for stream in streams:
            assert stream.next_event().event == "presence"
        for url in (first, first, last, last):
            assert len(call(url, f"/{roomid}/get_conversation")[1]) == 2

        assert (
            call(last, f"/{roomid}/delete_message", {"id": said["bob"], "owner_key": key})[0] == 200
        )
        started = time.monotonic()
        for stream in streams:
            assert stream.next_of("delete").data == {"id": said["bob"]}
        assert time.monotonic() - started < 2
        assert within(
            2,
            lambda: all(
                len(call(url, f"/{roomid}/get_conversation")[1]) == 1
                for url in (first, first, last, last)
            ),
        )

        assert call(first, f"/{roomid}/ban", {"owner_key": key, "username": "bob"})[0] == 200
        for stream in streams:
            assert stream.next_of("ban").data == {"username": "bob"}
        for url in (first, first, last, last):
            refused = call(
                url,
                f"/{roomid}/message",
                {"username": "bob", "token": tokens["bob"], "message": "let me in"},
            )
            assert refused[0] == 403

        assert call(last, f"/{roomid}/delete_room", {"owner_key": key})[0] == 200
        started = time.monotonic()
        for stream in streams:
            assert stream.next_of("gone").data == {}
        assert time.monotonic() - started < 2
        assert within(
            2,
            lambda: all(
                call(url, f"/{roomid}/{path}")[0] == 404
                for url in (first, first, last, last)
                for path in ("get_conversation", "messages", "settings")
            ),
        )
    finally:
        for stream in streams:
            stream.close()
