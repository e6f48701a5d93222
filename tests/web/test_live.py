"""Live rooms over a real HTTP server: event streams, resume, presence, tickets,
history paging, ETags and retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify

import flaskchat.presence
import flaskchat.store
from flaskchat import RoomStore

from actions import ChatActions
from support import EventStream, ServedApp


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"SSE_KEEPALIVE": 0.5}


@pytest.fixture
def served(app: Flask) -> Iterator[ServedApp]:
    with ServedApp(app) as served:
        yield served


@pytest.fixture
def room(chat: ChatActions) -> tuple[str, str]:
    roomid = chat.create_room()
    return roomid, chat.join(roomid, "alice")


def post_all(chat: ChatActions, roomid: str, token: str, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        response = chat.say(roomid, "alice", token, text)
        assert response.status_code == 200
        ids.append(response.json["id"])
    return ids


def test_a_stream_opens_with_presence_then_delivers_new_messages_only(
    chat: ChatActions, served: ServedApp, room: tuple[str, str]
) -> None:
    roomid, token = room
    post_all(chat, roomid, token, ["old news"])
    with EventStream(served.url, f"/{roomid}/events") as stream:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type", "").startswith("text/event-stream")
        first = stream.next_event()
        assert (first.event, first.data) == ("presence", {"online": []})
        [posted] = post_all(chat, roomid, token, ["fresh"])
        event = stream.next_of("message")
    assert event.id == posted
    assert event.data["text"] == "fresh" and event.data["username"] == "alice"
    assert event.data["line"].endswith("<alice> fresh")
    assert event.data["time"].endswith("Z")


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_replays_every_missed_message_in_order(
    chat: ChatActions, served: ServedApp, room: tuple[str, str], how: str
) -> None:
    roomid, token = room
    ids = post_all(chat, roomid, token, [f"m{n}" for n in range(5)])
    if how == "header":
        stream = EventStream(served.url, f"/{roomid}/events", last_event_id=ids[1])
    else:
        stream = EventStream(served.url, f"/{roomid}/events?after={ids[1]}")
    with stream:
        replayed = stream.messages(3)
        [live] = post_all(chat, roomid, token, ["m5"])
        assert stream.next_of("message").id == live
    assert [e.data["text"] for e in replayed] == ["m2", "m3", "m4"]
    assert [e.id for e in replayed] == ids[2:]


def test_reconnecting_during_a_flood_loses_and_doubles_nothing(
    chat: ChatActions, app: Flask, served: ServedApp, room: tuple[str, str]
) -> None:
    roomid, token = room
    total = 60
    store: RoomStore = app.extensions["flaskchat"]

    def flood() -> None:
        for n in range(total):
            store.post_message(roomid, "alice", token, f"flood {n}")
            time.sleep(0.005)

    poster = threading.Thread(target=flood)
    seen: list[str] = []
    last_id: str | None = None
    stream = EventStream(served.url, f"/{roomid}/events")
    assert stream.next_event().event == "presence"  # listening from here on
    poster.start()
    try:
        while len(seen) < total:
            event = stream.next_of("message")
            seen.append(event.data["text"])
            last_id = event.id
            if len(seen) % 7 == 0:  # drop the connection and come back
                stream.close()
                stream = EventStream(served.url, f"/{roomid}/events", last_event_id=last_id)
    finally:
        stream.close()
        poster.join()
    assert seen == [f"flood {n}" for n in range(total)]


def test_keepalive_comments_flow_while_the_room_is_quiet(
    served: ServedApp, room: tuple[str, str]
) -> None:
    roomid, _ = room
    with EventStream(served.url, f"/{roomid}/events") as stream:
        stream.next_event()
        deadline = time.monotonic() + 5
        while stream.comments < 2 and time.monotonic() < deadline:
            line = stream.response.readline()
            stream.comments += line.startswith(b":")
    assert stream.comments >= 2


def test_a_closed_stream_releases_its_listener(
    app: Flask, served: ServedApp, room: tuple[str, str]
) -> None:
    roomid, _ = room
    store: RoomStore = app.extensions["flaskchat"]
    with EventStream(served.url, f"/{roomid}/events") as stream:
        stream.next_event()
        assert store.signals._listeners[roomid] == 1
    deadline = time.monotonic() + 5
    while roomid in store.signals._listeners and time.monotonic() < deadline:
        time.sleep(0.05)
    assert roomid not in store.signals._listeners


def test_bad_stream_requests(chat: ChatActions, room: tuple[str, str]) -> None:
    roomid, _ = room
    assert chat.client.get("/" + "A" * 22 + "/events").status_code == 404
    bad_cursor = chat.client.get(f"/{roomid}/events", headers={"Last-Event-ID": "x-1"})
    assert bad_cursor.status_code == 400
    assert bad_cursor.json["succeeded"] is False
    forged = chat.client.get(f"/{roomid}/events?ticket=forged")
    assert forged.status_code == 401
    assert "ticket" in forged.json["explanation"]


def ticket_for(chat: ChatActions, roomid: str, username: str, token: str) -> str:
    response = chat.client.post(f"/{roomid}/ticket", json={"username": username, "token": token})
    assert response.status_code == 200, response.json
    return str(response.json["ticket"])


def test_tickets_are_single_use_and_need_a_valid_token(
    chat: ChatActions, served: ServedApp, room: tuple[str, str]
) -> None:
    roomid, token = room
    refused = chat.client.post(f"/{roomid}/ticket", json={"username": "alice", "token": "x"})
    assert refused.status_code == 401 and refused.json["ticket"] is None
    ticket = ticket_for(chat, roomid, "alice", token)
    assert token not in ticket
    with EventStream(served.url, f"/{roomid}/events?ticket={ticket}") as stream:
        assert stream.status == 200
        assert stream.next_event().data == {"online": ["alice"]}
    with EventStream(served.url, f"/{roomid}/events?ticket={ticket}") as replay:
        assert replay.status == 401


def test_expired_tickets_are_refused(store: RoomStore, chat: ChatActions) -> None:
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    ticket = store.issue_ticket(roomid, "alice", token)
    digest = flaskchat.rules.token_digest(ticket)
    assert store.backend.take_ticket(roomid, digest, time.time() + 61) is None


def test_presence_follows_streams_with_a_grace_period(
    chat: ChatActions, served: ServedApp, room: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_GRACE", 1.0)
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_CHECK", 0.2)
    roomid, alice_token = room
    bob_token = chat.join(roomid, "Bob")
    alice = EventStream(
        served.url, f"/{roomid}/events?ticket=" + ticket_for(chat, roomid, "alice", alice_token)
    )
    with alice:
        assert alice.next_presence() == {"online": ["alice"]}
        bob = EventStream(
            served.url, f"/{roomid}/events?ticket=" + ticket_for(chat, roomid, "bob", bob_token)
        )
        assert bob.next_presence() == {"online": ["Bob", "alice"]}
        assert alice.next_presence() == {"online": ["Bob", "alice"]}
        bob.close()
        left_at = time.monotonic()
        assert alice.next_presence() == {"online": ["alice"]}
        assert time.monotonic() - left_at >= 0.9  # not before the grace period


def test_a_quick_reconnect_does_not_flap_presence(
    chat: ChatActions, app: Flask, room: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_CHECK", 0.1)
    roomid, token = room
    store: RoomStore = app.extensions["flaskchat"]
    watcher = store.follow(roomid, keepalive=60)
    assert next(watcher) == flaskchat.store.Presence([])
    first = store.follow(roomid, username="alice")
    next(first)
    assert next(watcher) == flaskchat.store.PresenceChange(["alice"], [])
    first.close()
    second = store.follow(roomid, username="alice")
    next(second)
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(next(watcher)), daemon=True)
    reader.start()
    reader.join(1.0)
    assert results == []  # nothing changed: alice never appeared to leave
    store.post_message(roomid, "alice", token, "still here")
    reader.join(5)
    [item] = results
    assert isinstance(item, flaskchat.store.Message)  # the message, not a presence change
    second.close()
    watcher.close()


def test_history_pages_backwards_and_forwards(chat: ChatActions, room: tuple[str, str]) -> None:
    roomid, token = room
    ids = post_all(chat, roomid, token, [f"m{n}" for n in range(7)])
    newest = chat.client.get(f"/{roomid}/messages?limit=3").json
    assert [m["text"] for m in newest["messages"]] == ["m4", "m5", "m6"]
    assert newest["more"] is True
    older = chat.client.get(f"/{roomid}/messages?limit=3&before={ids[4]}").json
    assert [m["text"] for m in older["messages"]] == ["m1", "m2", "m3"]
    assert older["more"] is True
    oldest = chat.client.get(f"/{roomid}/messages?limit=3&before={ids[1]}").json
    assert ([m["text"] for m in oldest["messages"]], oldest["more"]) == (["m0"], False)
    newer = chat.client.get(f"/{roomid}/messages?limit=4&after={ids[2]}").json
    assert ([m["text"] for m in newer["messages"]], newer["more"]) == (
        ["m3", "m4", "m5", "m6"],
        False,
    )
    default = chat.client.get(f"/{roomid}/messages").json
    assert len(default["messages"]) == 7 and default["more"] is False
    message = default["messages"][0]
    assert set(message) == {"id", "time", "username", "text", "line"}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=abc",
        "limit=-1",
        "before=abc",
        "after=1.5",
        "before=1&after=2",
        "after=" + "9" * 30,
    ],
)
def test_bad_history_queries(chat: ChatActions, room: tuple[str, str], query: str) -> None:
    roomid, _ = room
    response = chat.client.get(f"/{roomid}/messages?{query}")
    assert response.status_code == 400
    assert response.json["succeeded"] is False and response.json["explanation"]


def test_get_conversation_answers_304_while_nothing_changed(
    chat: ChatActions, room: tuple[str, str]
) -> None:
    roomid, token = room
    post_all(chat, roomid, token, ["one"])
    first = chat.client.get(f"/{roomid}/get_conversation")
    etag = first.headers["ETag"]
    again = chat.client.get(f"/{roomid}/get_conversation", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    post_all(chat, roomid, token, ["two"])
    changed = chat.client.get(f"/{roomid}/get_conversation", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and len(changed.json) == 2
    assert changed.headers["ETag"] != etag


def test_get_conversation_sends_what_jsonify_would(
    app: Flask, chat: ChatActions, room: tuple[str, str]
) -> None:
    """The cached body keeps the reply byte for byte as the seed's `jsonify` gave it,
    with text that JSON must escape."""
    roomid, token = room
    post_all(chat, roomid, token, ['é "quoted" <b>', "\\ back\tslash 😀"])
    response = chat.client.get(f"/{roomid}/get_conversation")
    with app.app_context():
        expected = jsonify(response.json).get_data()
    assert response.data == expected
    assert response.mimetype == "application/json"


def test_get_conversation_etags_compare_weakly_and_304s_keep_the_tag(
    chat: ChatActions, room: tuple[str, str]
) -> None:
    roomid, token = room
    post_all(chat, roomid, token, ["one"])
    etag = chat.client.get(f"/{roomid}/get_conversation").headers["ETag"]
    for sent in (f"W/{etag}", f'"other", {etag}', "*"):
        again = chat.client.get(f"/{roomid}/get_conversation", headers={"If-None-Match": sent})
        assert again.status_code == 304, sent
        assert again.headers["ETag"] == etag
    other = chat.client.get(f"/{roomid}/get_conversation", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200 and other.json[-1].endswith("<alice> one")
    head = chat.client.open(f"/{roomid}/get_conversation", method="HEAD")
    assert head.status_code == 200 and head.data == b"" and head.headers["ETag"] == etag


def test_a_retried_send_is_stored_once(chat: ChatActions, room: tuple[str, str]) -> None:
    roomid, token = room
    first = chat.say(roomid, "alice", token, "hello", client_id="abc-1")
    retry = chat.say(roomid, "alice", token, "hello", client_id="abc-1")
    assert first.status_code == retry.status_code == 200
    assert first.json["id"] == retry.json["id"]
    assert len(chat.client.get(f"/{roomid}/get_conversation").json) == 1
