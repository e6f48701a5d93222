"""A client that closes its event stream is noticed within seconds, even when no
keep-alive is due for minutes: its listener stops, its slot under the per-IP
stream cap comes back, and its presence starts its grace period."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

import flaskchat.presence
import flaskchat.store
from flaskchat import RoomStore

from actions import ChatActions
from support import EventStream, ServedApp


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"SSE_KEEPALIVE": 600, "MAX_STREAMS_PER_IP": 1}


@pytest.fixture
def served(app: Flask) -> Iterator[ServedApp]:
    with ServedApp(app) as served:
        yield served


def test_a_closed_stream_is_noticed_long_before_its_next_keepalive(
    app: Flask, served: ServedApp, chat: ChatActions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_GRACE", 0.5)
    store: RoomStore = app.extensions["flaskchat"]
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    ticket = chat.client.post(f"/{roomid}/ticket", json={"username": "alice", "token": token})
    with EventStream(served.url, f"/{roomid}/events?ticket={ticket.json['ticket']}") as stream:
        assert stream.next_event().data == {"online": ["alice"]}
        with EventStream(served.url, f"/{roomid}/events") as second:
            assert second.status == 429  # the cap of one stream is taken
    closed_at = time.monotonic()
    while roomid in store.signals._listeners and time.monotonic() - closed_at < 10:
        time.sleep(0.05)
    assert roomid not in store.signals._listeners
    # Noticed at the next presence check (every 2 s), not after 600 s.
    assert time.monotonic() - closed_at < 5
    with EventStream(served.url, f"/{roomid}/events") as again:
        assert again.status == 200  # the slot came back
        time.sleep(0.6)  # past the grace period
        store.presence.changed(roomid)
        assert store.online(roomid) == []
