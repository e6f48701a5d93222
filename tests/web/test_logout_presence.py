"""Logging out ends what the token opened: its unused stream tickets stop
working, and its open streams stop counting the user as present within a few
seconds, on every server. The user's other devices stay online."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

import flaskchat.presence
import flaskchat.store

from actions import ChatActions
from support import EventStream, ServedApp


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"SSE_KEEPALIVE": 60, "RATELIMIT_ENABLED": False}


@pytest.fixture
def served(app: Flask) -> Iterator[ServedApp]:
    with ServedApp(app) as served:
        yield served


def ticket_for(chat: ChatActions, roomid: str, username: str, token: str) -> str:
    response = chat.client.post(f"/{roomid}/ticket", json={"username": username, "token": token})
    assert response.status_code == 200, response.json
    return str(response.json["ticket"])


def logout(chat: ChatActions, roomid: str, username: str, token: str) -> None:
    response = chat.client.post(f"/{roomid}/logout", json={"username": username, "token": token})
    assert response.status_code == 200, response.json


def online_within(stream: EventStream, expected: list[str], seconds: float) -> float:
    """Read presence events until the list is `expected`; how long it took."""
    started = time.monotonic()
    online = None
    while online != expected:
        online = stream.next_presence()["online"]
        assert time.monotonic() - started < seconds, online
    return time.monotonic() - started


def test_a_ticket_fetched_before_logout_is_refused_after_it(
    chat: ChatActions, served: ServedApp
) -> None:
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    ticket = ticket_for(chat, roomid, "alice", token)
    logout(chat, roomid, "alice", token)
    with EventStream(served.url, f"/{roomid}/events?ticket={ticket}") as stream:
        assert stream.status == 401


def stays(stream: EventStream, names: list[str], seconds: float) -> None:
    """No presence change removes any of `names` for `seconds` (the stream is not
    read again afterwards: its socket timed out)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stream.set_timeout(max(deadline - time.monotonic(), 0.01))
        try:
            online = stream.next_presence()["online"]
        except TimeoutError:
            return
        assert set(names) <= set(online), online
        assert names != ["bob"] or online == ["bob"], online


def test_logout_ends_the_presence_of_that_device_only(
    chat: ChatActions, served: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_RENEW", 0.3)
    roomid = chat.create_room()
    phone = chat.join(roomid, "alice")
    laptop = chat.login(roomid, "alice")
    bob = chat.join(roomid, "bob")
    watcher = EventStream(
        served.url, f"/{roomid}/events?ticket={ticket_for(chat, roomid, 'bob', bob)}"
    )
    streams = [
        EventStream(served.url, f"/{roomid}/events?ticket={ticket_for(chat, roomid, 'alice', t)}")
        for t in (phone, laptop)
    ]
    try:
        online_within(watcher, ["alice", "bob"], 5)
        logout(chat, roomid, "alice", phone)
        stays(watcher, ["alice", "bob"], 3)  # the laptop keeps her online
    finally:
        for stream in (watcher, *streams):
            stream.close()


def test_logging_out_of_the_only_device_leaves_the_list_within_three_seconds(
    chat: ChatActions, served: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_RENEW", 0.3)
    roomid = chat.create_room()
    alice = chat.join(roomid, "alice")
    bob = chat.join(roomid, "bob")
    watcher = EventStream(
        served.url, f"/{roomid}/events?ticket={ticket_for(chat, roomid, 'bob', bob)}"
    )
    own = EventStream(
        served.url, f"/{roomid}/events?ticket={ticket_for(chat, roomid, 'alice', alice)}"
    )
    try:
        online_within(watcher, ["alice", "bob"], 5)
        logout(chat, roomid, "alice", alice)
        online_within(watcher, ["bob"], 3)
        # Her stream stays open, renewing every 0.3 s, yet she does not come back;
        # nor when it closes, since a grace period is for reconnects.
        time.sleep(1)
        own.close()
        stays(watcher, ["bob"], 1.5)
        assert flaskchat.presence.PRESENCE_RENEW < 1  # so renewals had their chance
    finally:
        own.close()
        watcher.close()
