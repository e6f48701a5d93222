"""Every kind of bad input gets the seed's JSON shape, the right status, a clear
explanation, and stores nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flaskchat import RoomStore

from actions import PASSWORD, ChatActions

GOOD = {
    "register": {"username": "mallory", "password": PASSWORD},
    "login": {"username": "alice", "password": PASSWORD},
    "message": {"username": "alice", "token": "<token>", "message": "hello"},
    "logout": {"username": "alice", "token": "<token>"},
}

RAW_BODIES: list[tuple[str, bytes, str, int, str]] = [
    # (name, body, content type, status, fragment of the explanation)
    ("malformed", b'{"username": ', "application/json", 400, "not valid JSON"),
    ("not utf-8", b'{"username": "\xff\xfe"}', "application/json", 400, "UTF-8"),
    ("array", b"[1, 2]", "application/json", 400, "JSON object"),
    ("string", b'"hello"', "application/json", 400, "JSON object"),
    ("null", b"null", "application/json", 400, "JSON object"),
    ("empty", b"", "application/json", 400, "not valid JSON"),
    ("form", b"username=a&password=b", "application/x-www-form-urlencoded", 415, "JSON"),
    ("no type", b'{"username": "a"}', "", 415, "JSON"),
    ("deep", b"[" * 100_00 + b"]" * 100_00, "application/json", 400, "not valid JSON"),
    ("huge number", b'{"a": ' + b"9" * 5000 + b"}", "application/json", 400, "not valid JSON"),
    ("too large", b'{"message": "' + b"x" * 70_000 + b'"}', "application/json", 413, "too large"),
]


@pytest.fixture
def room(chat: ChatActions) -> tuple[str, str]:
    roomid = chat.create_room()
    return roomid, chat.join(roomid, "alice")


def assert_unchanged(store: RoomStore, roomid: str, before: Any) -> None:
    assert store.snapshot() == before
    assert store.backend.dump_room(roomid).users.keys() == {"alice"}


@pytest.mark.parametrize("endpoint", list(GOOD))
@pytest.mark.parametrize(("name", "body", "ctype", "status", "fragment"), RAW_BODIES)
def test_raw_bodies(
    chat: ChatActions,
    store: RoomStore,
    room: tuple[str, str],
    endpoint: str,
    name: str,
    body: bytes,
    ctype: str,
    status: int,
    fragment: str,
) -> None:
    roomid, _ = room
    before = store.snapshot()
    headers = {"Content-Type": ctype} if ctype else {}
    response = chat.client.post(f"/{roomid}/{endpoint}", data=body, headers=headers)
    assert response.status_code == status, response.data[:200]
    assert response.json["succeeded"] is False
    assert fragment in response.json["explanation"]
    if endpoint == "login":
        assert response.json["token"] is None
    assert_unchanged(store, roomid, before)


@pytest.mark.parametrize("endpoint", list(GOOD))
@pytest.mark.parametrize("bad_value", [None, 42, 1.5, True, ["a"], {"a": "b"}])
def test_missing_fields_and_wrong_types(
    chat: ChatActions, store: RoomStore, room: tuple[str, str], endpoint: str, bad_value: Any
) -> None:
    roomid, token = room
    before = store.snapshot()
    for field in GOOD[endpoint]:
        body = {k: (token if v == "<token>" else v) for k, v in GOOD[endpoint].items()}
        body[field] = bad_value
        response = chat.client.post(f"/{roomid}/{endpoint}", json=body)
        assert response.status_code == 400, (field, response.json)
        expected = "is missing" if bad_value is None else "must be a string"
        assert response.json["explanation"] == f"The field {field!r} {expected}."
    assert_unchanged(store, roomid, before)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "missing"),
        ({"alias": ""}, "name"),
        ({"alias": "   "}, "name"),
        ({"alias": 7}, "string"),
        ({"alias": "x" * 81}, "80"),
        ({"alias": "new\nline"}, "control"),
        ({"alias": "\ud800"}, "not valid text"),
    ],
)
def test_bad_room_creation(chat: ChatActions, store: RoomStore, body: Any, fragment: str) -> None:
    response = chat.client.post("/createroom", json=body)
    assert response.status_code == 400
    assert response.json["roomid"] is None
    assert fragment in response.json["explanation"]
    assert store.snapshot() == {}


@pytest.mark.parametrize(
    ("username", "password", "status", "fragment"),
    [
        ("", PASSWORD, 400, "username"),
        ("   ", PASSWORD, 400, "username"),
        ("x" * 33, PASSWORD, 400, "32"),
        ("has space", PASSWORD, 400, "letters"),
        ("<img src=x>", PASSWORD, 400, "letters"),
        ("zero\u200bwidth", PASSWORD, 400, "letters"),
        ("rtl\u202e", PASSWORD, 400, "letters"),
        ("new", "short", 400, "at least 8"),
        ("new", "p" * 1025, 400, "1024"),
        ("ALICE", PASSWORD, 409, "taken"),
        ("ａｌｉｃｅ", PASSWORD, 409, "taken"),
    ],
)
def test_bad_registrations(
    chat: ChatActions,
    store: RoomStore,
    room: tuple[str, str],
    username: str,
    password: str,
    status: int,
    fragment: str,
) -> None:
    roomid, _ = room
    before = store.snapshot()
    response = chat.register(roomid, username, password)
    assert response.status_code == status
    assert response.json["succeeded"] is False and fragment in response.json["explanation"]
    assert_unchanged(store, roomid, before)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("", "empty"),
        ("\n \t", "empty"),
        ("x" * 2001, "2000"),
        ("a\x00b", "control"),
        ("\x1b[2J", "control"),
        ("\ud83d", "not valid text"),
    ],
)
def test_bad_messages(
    chat: ChatActions, store: RoomStore, room: tuple[str, str], message: str, fragment: str
) -> None:
    roomid, token = room
    before = store.snapshot()
    response = chat.say(roomid, "alice", token, message)
    assert response.status_code == 400
    assert fragment in response.json["explanation"]
    assert_unchanged(store, roomid, before)


@pytest.mark.parametrize(
    ("username", "token"),
    [
        ("alice", "forged"),
        ("alice", ""),
        ("bob", "<alice's>"),
        ("nobody", "<alice's>"),
        ("<bad name>", "<alice's>"),
        ("alice", "<alice's>x"),
    ],
)
def test_bad_tokens(
    chat: ChatActions, store: RoomStore, room: tuple[str, str], username: str, token: str
) -> None:
    roomid, alice_token = room
    chat.register(roomid, "bob")
    before = store.snapshot()
    token = token.replace("<alice's>", alice_token)
    response = chat.say(roomid, username, token, "impostor")
    assert response.status_code == 401
    assert "log in" in response.json["explanation"]
    assert store.snapshot() == before


def test_a_token_from_another_room_is_refused(chat: ChatActions, store: RoomStore) -> None:
    room_a, room_b = chat.create_room("A"), chat.create_room("B")
    token = chat.join(room_a, "alice")
    chat.register(room_b, "alice")
    response = chat.say(room_b, "alice", token, "cross-room")
    assert response.status_code == 401
    assert store.conversation(room_b) == []


def test_bad_client_id(chat: ChatActions, store: RoomStore, room: tuple[str, str]) -> None:
    roomid, token = room
    for client_id, status in [("x" * 65, 400), ("", 400), (12, 400)]:
        response = chat.say(roomid, "alice", token, "hi", client_id=client_id)
        assert response.status_code == status
    assert store.conversation(roomid) == []


@pytest.mark.parametrize("username", ["alice", "nobody", "\ud800"])
def test_a_password_that_is_not_text_is_a_failed_login(
    chat: ChatActions, store: RoomStore, room: tuple[str, str], username: str
) -> None:
    roomid, _ = room
    body = json.dumps({"username": username, "password": "pass\ud800word"})
    response = chat.client.post(f"/{roomid}/login", data=body, content_type="application/json")
    assert response.status_code == 401
    assert response.json == {
        "succeeded": False,
        "token": None,
        "explanation": "Unknown username or wrong password.",
    }
