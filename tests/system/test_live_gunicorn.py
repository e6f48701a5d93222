"""Live delivery through real gunicorn processes sharing one SQLite file: a message
posted to one process reaches streams held by the others, whatever the worker
class, and password hashing does not stall a gevent worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import EventStream, Service, call, gunicorn_service

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"
WORKER_ARGS = {
    "gevent": ["-k", "gevent", "--worker-connections", "1000"],
    "gthread": ["-k", "gthread", "--threads", "16"],
}


def start_server(tmp_path: Path, name: str, worker: str, store_url: str) -> Service:
    options = ("--graceful-timeout", "2", *WORKER_ARGS[worker])
    env = {"FLASKCHAT_SSE_KEEPALIVE": "1"}
    return gunicorn_service(store_url, tmp_path / f"{name}.log", *options, env=env)


@pytest.fixture(params=["gevent-sqlite", "gthread-sqlite", "gevent-redis"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """Two servers of two workers each on one store: a SQLite file, or Redis."""
    worker, store = str(request.param).split("-")
    if store == "redis":
        store_url = str(request.getfixturevalue("redis_url"))
    else:
        store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    one = start_server(tmp_path, "one", worker, store_url).start()
    two = start_server(tmp_path, "two", worker, store_url)
    try:
        two.start()
        yield one, two
    finally:
        two.stop()
        one.stop()
    assert f"Using worker: {worker}" in one.logs()


def ticket(base: str, roomid: str, username: str, token: str) -> str:
    status, body = call(base, f"/{roomid}/ticket", {"username": username, "token": token})
    assert status == 200, body
    return str(body["ticket"])


def test_messages_reach_streams_held_by_other_processes(
    servers: tuple[Service, Service],
) -> None:
    one, two = servers
    status, body = call(one.url, "/createroom", {"alias": "across"})
    roomid = body["roomid"]
    assert (
        call(one.url, f"/{roomid}/register", {"username": "alice", "password": PASSWORD})[0] == 200
    )
    status, body = call(two.url, f"/{roomid}/login", {"username": "alice", "password": PASSWORD})
    token = body["token"]

    streams = [EventStream(s.url, f"/{roomid}/events") for s in (one, one, one, two, two)]
    try:
        for stream in streams:
            assert stream.next_event().event == "presence"
        posted = []
        for n in range(12):
            target = (one, two)[n % 2]
            status, body = call(
                target.url,
                f"/{roomid}/message",
                {"username": "alice", "token": token, "message": f"m{n}"},
            )
            assert status == 200, body
            posted.append(body["id"])
        for stream in streams:
            received = stream.messages(12)
            assert [e.id for e in received] == posted
            assert [e.data["text"] for e in received] == [f"m{n}" for n in range(12)]
    finally:
        for stream in streams:
            stream.close()


def test_resume_on_another_server_and_presence_across_servers(
    servers: tuple[Service, Service],
) -> None:
    one, two = servers
    roomid = call(one.url, "/createroom", {"alias": "resume"})[1]["roomid"]
    tokens = {}
    for name in ("alice", "bob"):
        call(one.url, f"/{roomid}/register", {"username": name, "password": PASSWORD})
        tokens[name] = call(two.url, f"/{roomid}/login", {"username": name, "password": PASSWORD})[
            1
        ]["token"]

    def say(text: str) -> str:
        status, body = call(
            two.url,
            f"/{roomid}/message",
            {"username": "bob", "token": tokens["bob"], "message": text},
        )
        assert status == 200
        return str(body["id"])

    ids = [say(f"before {n}") for n in range(3)]
    with EventStream(one.url, f"/{roomid}/events?after={ids[0]}") as first:
        assert [e.id for e in first.messages(2)] == ids[1:]
        last = first.last_id
    missed = [say(f"while away {n}") for n in range(4)]
    with EventStream(two.url, f"/{roomid}/events", last_event_id=last) as second:
        assert [e.id for e in second.messages(4)] == missed

    alice = EventStream(
        one.url, f"/{roomid}/events?ticket=" + ticket(one.url, roomid, "alice", tokens["alice"])
    )
    bob = EventStream(
        two.url, f"/{roomid}/events?ticket=" + ticket(two.url, roomid, "bob", tokens["bob"])
    )
    try:
        deadline = time.monotonic() + 10
        online: list[str] = []
        while online != ["alice", "bob"] and time.monotonic() < deadline:
            online = bob.next_presence()["online"]
        assert online == ["alice", "bob"]
    finally:
        alice.close()
        bob.close()


def test_password_hashing_does_not_stall_a_gevent_worker(tmp_path: Path) -> None:
    server = gunicorn_service(
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        tmp_path / "gunicorn.log",
        "-k",
        "gevent",
        workers=1,
    ).start()
    try:
        roomid = call(server.url, "/createroom", {"alias": "busy"})[1]["roomid"]
        call(server.url, f"/{roomid}/register", {"username": "alice", "password": PASSWORD})
        finished: dict[str, float] = {}

        def login(n: int) -> None:
            call(server.url, f"/{roomid}/login", {"username": "alice", "password": PASSWORD})
            finished[f"login {n}"] = time.monotonic()

        logins = [threading.Thread(target=login, args=(n,)) for n in range(10)]
        for thread in logins:
            thread.start()
        time.sleep(0.05)
        assert call(server.url, "/healthz")[0] == 200
        health_done = time.monotonic()
        for thread in logins:
            thread.join()
        # Ten scrypt hashes take about a second of CPU. Had they run on the event
        # loop, /healthz would have waited behind all of them.
        assert sum(done > health_done for done in finished.values()) >= 5, finished
    finally:
        server.stop()


@pytest.mark.parametrize("worker", ["gevent", "gthread"])
def test_a_closed_stream_frees_its_slot_within_seconds(tmp_path: Path, worker: str) -> None:
    """With keep-alives ten minutes apart, only asking the socket can tell that the
    client is gone; the per-IP stream cap of one then takes the next stream."""
    env = {"FLASKCHAT_SSE_KEEPALIVE": "600", "FLASKCHAT_MAX_STREAMS_PER_IP": "1"}
    server = gunicorn_service(
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        tmp_path / "gunicorn.log",
        *WORKER_ARGS[worker],
        workers=1,
        env=env,
    ).start()
    try:
        roomid = call(server.url, "/createroom", {"alias": "hang up"})[1]["roomid"]
        with EventStream(server.url, f"/{roomid}/events") as first:
            assert first.next_event().event == "presence"
            with EventStream(server.url, f"/{roomid}/events") as refused:
                assert refused.status == 429
        deadline = time.monotonic() + 8
        status = 429
        while status == 429 and time.monotonic() < deadline:
            with EventStream(server.url, f"/{roomid}/events") as again:
                status = again.status
            time.sleep(0.2)
        assert status == 200
    finally:
        server.stop()
