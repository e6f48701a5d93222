"""Abuse controls: rate limits with their 429 replies, the login lockout, budgets
that forged headers cannot move, limits shared between servers on one store, and
the cap on open event streams."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from limits.storage import RedisStorage

from flaskchat import create_app
from flaskchat.limit_storage import SqliteStorage

from actions import PASSWORD, ChatActions
from support import EventStream, ServedApp

TIGHT = {
    "RATELIMIT_CREATEROOM": "3/minute",
    "RATELIMIT_LOGIN_FAILURES": "3/minute",
    "RATELIMIT_LOGIN_ACCOUNT": "6/minute",
    "RATELIMIT_MESSAGE_USER": "4/10second",
    "RATELIMIT_MESSAGE_IP": "6/10second",
    "MAX_STREAMS_PER_IP": 2,
    "SSE_KEEPALIVE": 0.2,
}


@pytest.fixture
def app_config() -> dict[str, Any]:
    return TIGHT


@pytest.fixture
def one(app: Flask) -> ChatActions:
    """A client of a single server."""
    return ChatActions(app.test_client())  # type: ignore[arg-type]


def assert_limited(response: Any) -> None:
    assert response.status_code == 429
    assert response.json["succeeded"] is False
    assert "too fast" in response.json["explanation"]
    assert int(response.headers["Retry-After"]) >= 1


def test_room_creation_is_limited_per_ip(one: ChatActions) -> None:
    for _ in range(3):
        one.create_room()
    response = one.client.post("/createroom", json={"alias": "one more"})
    assert_limited(response)
    assert response.json["roomid"] is None
    other_ip = one.client.post(
        "/createroom", json={"alias": "elsewhere"}, environ_base={"REMOTE_ADDR": "10.9.8.7"}
    )
    assert other_ip.status_code == 200


def test_forged_forwarded_for_never_moves_the_budget(one: ChatActions) -> None:
    for n in range(3):
        response = one.client.post(
            "/createroom", json={"alias": "x"}, headers={"X-Forwarded-For": f"192.0.2.{n}"}
        )
        assert response.status_code == 200
    forged = one.client.post(
        "/createroom", json={"alias": "x"}, headers={"X-Forwarded-For": "198.51.100.7"}
    )
    assert_limited(forged)


def test_behind_a_trusted_proxy_only_the_proxys_entry_counts(
    make_app: Callable[[], Flask], app_config: dict[str, Any]
) -> None:
    app_config["TRUSTED_PROXIES"] = 1
    client = make_app().test_client()
    # The proxy appends the address it saw; what the client put before it is ignored.
    for n in range(3):
        headers = {"X-Forwarded-For": f"203.0.113.{n}, 192.0.2.10"}
        assert client.post("/createroom", json={"alias": "x"}, headers=headers).status_code == 200
    headers = {"X-Forwarded-For": "203.0.113.99, 192.0.2.10"}
    assert_limited(client.post("/createroom", json={"alias": "x"}, headers=headers))
    other = {"X-Forwarded-For": "192.0.2.11"}
    assert client.post("/createroom", json={"alias": "x"}, headers=other).status_code == 200


def login_status(client: Any, roomid: str, password: str, ip: str) -> int:
    """Status of one login as alice from `ip`."""
    response = client.post(
        f"/{roomid}/login",
        json={"username": "alice", "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )
    return int(response.status_code)


def test_repeated_failed_logins_lock_that_username_from_that_address(one: ChatActions) -> None:
    roomid = one.create_room()
    one.register(roomid, "alice")
    one.register(roomid, "bob")
    wrong = {"username": "alice", "password": "not the password"}
    for _ in range(3):
        assert one.client.post(f"/{roomid}/login", json=wrong).status_code == 401
    right = {"username": "ALICE", "password": PASSWORD}
    locked = one.client.post(f"/{roomid}/login", json=right)
    assert_limited(locked)
    assert locked.json["token"] is None
    assert one.login(roomid, "bob")  # bob is not affected


def test_a_strangers_guesses_do_not_lock_the_member_out(one: ChatActions) -> None:
    roomid = one.create_room()
    one.register(roomid, "alice")
    for _ in range(3):
        assert login_status(one.client, roomid, "a wrong guess", "203.0.113.5") == 401
    assert login_status(one.client, roomid, "a wrong guess", "203.0.113.5") == 429
    assert login_status(one.client, roomid, PASSWORD, "198.51.100.7") == 200


def test_the_account_brake_stops_guesses_from_many_addresses(one: ChatActions) -> None:
    roomid = one.create_room()
    one.register(roomid, "alice")
    for n in range(6):  # one guess from each of six addresses: all are checked
        assert login_status(one.client, roomid, "a wrong guess", f"203.0.113.{n}") == 401
    assert login_status(one.client, roomid, "a wrong guess", "203.0.113.99") == 429
    braked = one.client.post(
        f"/{roomid}/login",
        json={"username": "alice", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert_limited(braked)
    assert braked.json["token"] is None


def test_successful_logins_do_not_count_as_failures(one: ChatActions) -> None:
    roomid = one.create_room()
    one.register(roomid, "alice")
    for _ in range(10):  # more than the lock-out and the brake allow failures
        assert one.login(roomid, "alice")
    wrong = {"username": "alice", "password": "not the password"}
    for _ in range(3):
        assert one.client.post(f"/{roomid}/login", json=wrong).status_code == 401
    assert_limited(one.client.post(f"/{roomid}/login", json=wrong))


def guess_at_once(app: Flask, roomid: str, addresses: list[str]) -> Counter[int]:
    """One wrong login as alice from each of `addresses`, all sent at the same
    moment from threads; the count of each status."""
    start = threading.Barrier(len(addresses))

    def guess(ip: str) -> int:
        client = app.test_client()
        start.wait(timeout=30)
        return login_status(client, roomid, "a wrong guess", ip)

    with ThreadPoolExecutor(len(addresses)) as pool:
        return Counter(pool.map(guess, addresses))


def test_guesses_sent_at_once_are_checked_no_more_than_the_budget(
    app: Flask, one: ChatActions
) -> None:
    roomid = one.create_room()
    one.register(roomid, "alice")
    statuses = guess_at_once(app, roomid, ["203.0.113.5"] * 20)
    assert statuses == {401: 3, 429: 17}


def test_guesses_sent_at_once_from_many_addresses_meet_the_brake(
    app: Flask, one: ChatActions
) -> None:
    roomid = one.create_room()
    one.register(roomid, "alice")
    # Two from each address: under the lock-out of each, so only the brake holds.
    statuses = guess_at_once(app, roomid, [f"203.0.113.{n % 12}" for n in range(24)])
    assert statuses == {401: 6, 429: 18}
    assert login_status(one.client, roomid, PASSWORD, "198.51.100.7") == 429


def test_messages_allow_a_burst_then_slow_down_per_user(one: ChatActions) -> None:
    roomid = one.create_room()
    alice = one.join(roomid, "alice")
    bob = one.join(roomid, "bob")
    spoof = {"username": "alice", "token": "forged", "message": "spoof"}
    for _ in range(5):  # failed attempts in alice's name do not spend her budget
        response = one.client.post(
            f"/{roomid}/message", json=spoof, environ_base={"REMOTE_ADDR": "10.1.1.1"}
        )
        assert response.status_code == 401
    for n in range(4):
        assert one.say(roomid, "alice", alice, f"burst {n}").status_code == 200
    assert_limited(one.say(roomid, "alice", alice, "one too many"))
    assert one.say(roomid, "bob", bob, "bob is fine").status_code == 200
    lines = one.client.get(f"/{roomid}/get_conversation").json
    assert len(lines) == 5


def test_messages_are_limited_per_ip_across_users(one: ChatActions) -> None:
    roomid = one.create_room()
    tokens = {name: one.join(roomid, name) for name in ("a1", "b2", "c3")}
    sent = 0
    for name, token in tokens.items():
        for _ in range(2):
            assert one.say(roomid, name, token, "hi").status_code == 200
            sent += 1
    assert sent == 6
    assert_limited(one.say(roomid, "a1", tokens["a1"], "seventh from this address"))


def test_limits_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASKCHAT_RATELIMIT_ENABLED", "false")
    app = create_app({"TESTING": True, "STORE_URL": "memory://", **TIGHT})
    client = app.test_client()
    for _ in range(6):
        assert client.post("/createroom", json={"alias": "x"}).status_code == 200


def test_limits_are_shared_by_servers_on_one_store(make_app: Callable[[], Flask]) -> None:
    apps = [make_app() for _ in range(2)]
    servers = [app.test_client() for app in apps]
    for n in range(3):
        assert servers[n % 2].post("/createroom", json={"alias": "x"}).status_code == 200
    assert_limited(servers[1].post("/createroom", json={"alias": "x"}))
    assert_limited(servers[0].post("/createroom", json={"alias": "x"}))


def test_counts_live_beside_the_store(app: Flask, store_url: str) -> None:
    """A SQLite store keeps them in a file of their own next to it; Redis in itself."""
    storage = app.extensions["flaskchat_limiter"].storage
    if store_url.startswith("sqlite"):
        assert isinstance(storage, SqliteStorage)
        assert storage.path.name == "chat.sqlite3.limits"
    else:
        assert isinstance(storage, RedisStorage)


def test_open_streams_are_capped_per_ip(app: Flask, one: ChatActions) -> None:
    roomid = one.create_room()
    with ServedApp(app) as served:
        first = EventStream(served.url, f"/{roomid}/events")
        second = EventStream(served.url, f"/{roomid}/events")
        with first, second:
            assert first.status == second.status == 200
            with EventStream(served.url, f"/{roomid}/events") as third:
                assert third.status == 429
                assert int(third.response.getheader("Retry-After", "0")) >= 1
                assert "live connections" in third.response.read().decode()
        # Closed streams give their places back once the server notices.
        deadline = time.monotonic() + 10
        while True:
            with EventStream(served.url, f"/{roomid}/events") as again:
                if again.status == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        assert again.status == 200
