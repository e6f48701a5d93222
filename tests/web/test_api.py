"""The seed's API through the Flask test client: shapes and status codes of DESIGN.md 1.1."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from flaskchat import RoomStore

from actions import PASSWORD, ChatActions

LINE = re.compile(r"^\d\d-\d\d-\d\d \d\d:\d\d:\d\d <alice> what's going on\?$")


def test_create_room_returns_only_a_roomid_and_the_room_exists(
    chat: ChatActions, store: RoomStore
) -> None:
    response = chat.client.post("/createroom", json={"alias": "Bob and Al's room"})
    assert response.status_code == 200
    roomid = response.json["roomid"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", roomid)
    assert store.alias(roomid) == "Bob and Al's room"


def test_the_seed_conversation_round_trip(chat: ChatActions) -> None:
    roomid = chat.create_room()
    response = chat.register(roomid, "alice")
    assert (response.status_code, response.json["succeeded"], response.json["explanation"]) == (
        200,
        True,
        None,
    )
    login = chat.client.post(f"/{roomid}/login", json={"username": "alice", "password": PASSWORD})
    assert login.status_code == 200 and login.json["succeeded"] is True
    token = login.json["token"]
    sent = chat.say(roomid, "alice", token, "what's going on?")
    assert sent.status_code == 200
    assert sent.json["succeeded"] is True and sent.json["explanation"] is None
    conversation = chat.client.get(f"/{roomid}/get_conversation")
    assert conversation.status_code == 200
    assert conversation.mimetype == "application/json"
    [line] = conversation.json
    assert LINE.match(line), line


def test_register_twice_is_409_and_case_insensitive(chat: ChatActions) -> None:
    roomid = chat.create_room()
    assert chat.register(roomid, "Tom").status_code == 200
    response = chat.register(roomid, "tom")
    assert response.status_code == 409
    assert response.json == {
        "succeeded": False,
        "explanation": "The name tom is already taken in this room.",
    }


def test_failed_login_has_the_seed_shape(chat: ChatActions) -> None:
    roomid = chat.create_room()
    chat.register(roomid, "alice")
    for username, password in [("alice", "wrong password"), ("nobody", PASSWORD)]:
        response = chat.client.post(
            f"/{roomid}/login", json={"username": username, "password": password}
        )
        assert response.status_code == 401
        assert response.json["succeeded"] is False and response.json["token"] is None
        assert response.json["explanation"] == "Unknown username or wrong password."


def test_logout_revokes_the_token_and_a_replay_is_401(chat: ChatActions) -> None:
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    body = {"username": "alice", "token": token}
    assert chat.client.post(f"/{roomid}/logout", json=body).json["succeeded"] is True
    assert chat.client.post(f"/{roomid}/logout", json=body).status_code == 401
    refused = chat.say(roomid, "alice", token, "after logout")
    assert refused.status_code == 401 and refused.json["succeeded"] is False
    assert chat.client.get(f"/{roomid}/get_conversation").json == []


def test_unknown_room_is_404_before_any_other_check(chat: ChatActions) -> None:
    missing = "A" * 22
    for method, path, kwargs in [
        ("post", "register", {"data": "not json"}),
        ("post", "login", {"json": {"username": 1}}),
        ("post", "message", {"data": b"\xff", "content_type": "application/json"}),
        ("post", "logout", {}),
        ("get", "get_conversation", {}),
    ]:
        response = getattr(chat.client, method)(f"/{missing}/{path}", **kwargs)
        assert response.status_code == 404, path
        assert response.json["succeeded"] is False
        assert response.json["explanation"] == "There is no room at this address."
    login = chat.client.post(f"/{missing}/login", json={})
    assert login.json["token"] is None


def test_unknown_room_page_is_an_html_404(client: FlaskClient) -> None:
    response = client.get("/" + "A" * 22 + "/")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert b"There is no room at this address." in response.data


def test_room_without_trailing_slash_redirects(chat: ChatActions) -> None:
    roomid = chat.create_room()
    response = chat.client.get(f"/{roomid}")
    assert response.status_code in {301, 308}
    assert response.headers["Location"] == f"{roomid}/"  # relative: see tests/web/test_hosts.py


def test_wrong_method_is_a_json_405(chat: ChatActions) -> None:
    roomid = chat.create_room()
    response = chat.client.get(f"/{roomid}/message")
    assert response.status_code == 405
    assert response.json["succeeded"] is False
    assert "POST" in response.headers["Allow"]
    assert chat.client.get("/createroom").json["roomid"] is None
    assert "status" not in chat.client.post("/healthz").json  # not a health answer


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json) == (200, {"status": "ok"})


def test_conversation_keeps_user_text_as_is_for_the_renderer(chat: ChatActions) -> None:
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    chat.say(roomid, "alice", token, "<script>alert(1)</script> & 'quotes'")
    [line] = chat.client.get(f"/{roomid}/get_conversation").json
    assert line.endswith("<alice> <script>alert(1)</script> & 'quotes'")
