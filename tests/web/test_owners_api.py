"""Every status of DESIGN 1.3 through two app instances on one store, the
lock-out on wrong owner keys, and the moderation events on a live stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flaskchat import create_app

from actions import ChatActions
from support import EventStream, ServedApp, close_app

NO_ROOM = "/" + "A" * 22


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"RATELIMIT_ENABLED": False, "SSE_KEEPALIVE": 60}


@pytest.fixture
def owned(chat: ChatActions) -> dict[str, str]:
    """A room with its owner key, two members and a message of each."""
    reply = chat.client.post("/createroom", json={"alias": "owned"})
    assert reply.status_code == 200
    room = {"roomid": reply.json["roomid"], "key": reply.json["owner_key"]}
    for name in ("alice", "bob"):
        room[name] = chat.join(room["roomid"], name)
        said = chat.say(room["roomid"], name, room[name], f"{name} was here")
        room[f"{name}_said"] = said.json["id"]
    return room


def post(chat: ChatActions, room: dict[str, str], path: str, **body: Any) -> Any:
    return chat.client.post(f"/{room['roomid']}/{path}", json=body)


def test_createroom_answers_an_owner_key(chat: ChatActions) -> None:
    reply = chat.client.post("/createroom", json={"alias": "mine"})
    assert set(reply.json) == {"roomid", "owner_key"}
    assert len(reply.json["owner_key"]) >= 43
    refused = chat.client.post("/createroom", json={"alias": ""})
    assert refused.status_code == 400
    assert (refused.json["roomid"], refused.json["owner_key"]) == (None, None)


@pytest.mark.parametrize(
    ("who", "target", "status"),
    [
        ("author", "bob_said", 200),
        ("owner", "alice_said", 200),
        ("other member", "alice_said", 403),
        ("bad token", "bob_said", 401),
        ("bad key", "bob_said", 401),
        ("nobody", "bob_said", 400),
        ("owner", "missing", 404),
        ("owner", "malformed", 400),
    ],
)
def test_delete_message_statuses(
    chat: ChatActions, owned: dict[str, str], who: str, target: str, status: int
) -> None:
    message_id = {"missing": "999999", "malformed": "x-1"}.get(target) or owned[target]
    if message_id == "999999" and not owned["bob_said"].isdigit():
        message_id = "9999999999999-0"  # a Redis stream id no message has
    credentials = {
        "author": {"username": "bob", "token": owned["bob"]},
        "owner": {"owner_key": owned["key"]},
        "other member": {"username": "bob", "token": owned["bob"]},
        "bad token": {"username": "bob", "token": "forged"},
        "bad key": {"owner_key": "forged"},
        "nobody": {},
    }[who]
    reply = post(chat, owned, "delete_message", id=message_id, **credentials)
    assert reply.status_code == status, reply.json
    assert reply.json["succeeded"] is (status == 200)
    lines = chat.client.get(f"/{owned['roomid']}/get_conversation").json
    assert len(lines) == (1 if status == 200 else 2)


def test_every_owner_endpoint_is_404_for_an_unknown_room(chat: ChatActions) -> None:
    for path in (
        "delete_message",
        "ban",
        "unban",
        "settings",
        "export",
        "owner_key",
        "delete_room",
    ):
        reply = chat.client.post(f"{NO_ROOM}/{path}", json={"owner_key": "x"})
        assert reply.status_code == 404, path
        assert reply.json["succeeded"] is False
    assert chat.client.get(f"{NO_ROOM}/settings").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("ban", {"username": "bob"}, 200),
        ("ban", {"username": "nobody"}, 404),
        ("ban", {"username": "bob", "owner_key": "forged"}, 401),
        ("ban", {}, 400),
        ("unban", {"username": "bob"}, 404),  # not banned
        ("unban", {"username": "bob", "owner_key": "forged"}, 401),
    ],
)
def test_ban_statuses(
    chat: ChatActions, owned: dict[str, str], path: str, body: dict[str, str], status: int
) -> None:
    reply = post(chat, owned, path, **{"owner_key": owned["key"], **body})
    assert reply.status_code == status, reply.json


def test_a_banned_member_is_refused_with_403_until_unbanned(
    chat: ChatActions, owned: dict[str, str]
) -> None:
    assert post(chat, owned, "ban", owner_key=owned["key"], username="BOB").status_code == 200
    said = chat.say(owned["roomid"], "bob", owned["bob"], "hello?")
    assert said.status_code == 403 and "removed" in said.json["explanation"]
    login = post(chat, owned, "login", username="bob", password="correct horse battery")
    assert (login.status_code, login.json["token"]) == (403, None)
    assert chat.register(owned["roomid"], "Bob").status_code == 403
    shown = chat.client.get(
        f"/{owned['roomid']}/settings", headers={"Authorization": f"Bearer {owned['key']}"}
    )
    assert shown.json["banned"] == ["bob"]
    assert post(chat, owned, "unban", owner_key=owned["key"], username="bob").status_code == 200
    assert chat.login(owned["roomid"], "bob")


def test_settings_are_public_but_the_ban_list(chat: ChatActions, owned: dict[str, str]) -> None:
    public = chat.client.get(f"/{owned['roomid']}/settings")
    assert public.json == {"registration": "open", "retention_days": None}
    wrong = chat.client.get(
        f"/{owned['roomid']}/settings", headers={"Authorization": "Bearer forged"}
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"registration": "closed"}, 200),
        ({"retention_days": 30}, 200),
        ({"retention_days": None}, 200),
        ({"registration": "ajar"}, 400),
        ({"retention_days": 0}, 400),
        ({"retention_days": 3651}, 400),
        ({"retention_days": "7"}, 400),
        ({"retention_days": True}, 400),
        ({"owner_key": "forged"}, 401),
    ],
)
def test_update_settings_statuses(
    chat: ChatActions, owned: dict[str, str], change: dict[str, Any], status: int
) -> None:
    reply = post(chat, owned, "settings", **{"owner_key": owned["key"], **change})
    assert reply.status_code == status, reply.json
    if status == 200:
        expected = {"registration": "open", "retention_days": None, "banned": [], **change}
        assert reply.json["settings"] == expected
    else:
        assert reply.json["settings"] is None


def test_closed_registration_is_403_for_newcomers_only(
    chat: ChatActions, owned: dict[str, str]
) -> None:
    post(chat, owned, "settings", owner_key=owned["key"], registration="closed")
    refused = chat.register(owned["roomid"], "carol")
    assert refused.status_code == 403 and "closed" in refused.json["explanation"]
    assert chat.login(owned["roomid"], "alice")


def test_export_as_json_and_as_text(chat: ChatActions, owned: dict[str, str]) -> None:
    exported = post(chat, owned, "export", owner_key=owned["key"])
    assert exported.status_code == 200 and exported.mimetype == "application/json"
    body = json.loads(exported.data)
    assert (body["roomid"], body["alias"]) == (owned["roomid"], "owned")
    assert [m["text"] for m in body["messages"]] == ["alice was here", "bob was here"]
    assert set(body["messages"][0]) == {"id", "time", "username", "text", "line"}
    text = post(chat, owned, "export", owner_key=owned["key"], format="text")
    assert text.mimetype == "text/plain"
    assert (
        text.data.decode().splitlines()
        == chat.client.get(f"/{owned['roomid']}/get_conversation").json
    )
    assert post(chat, owned, "export", owner_key="forged").status_code == 401
    assert post(chat, owned, "export", owner_key=owned["key"], format="xml").status_code == 400


def test_a_rotated_owner_key_retires_the_old(chat: ChatActions, owned: dict[str, str]) -> None:
    reply = post(chat, owned, "owner_key", owner_key=owned["key"])
    assert reply.status_code == 200 and reply.json["owner_key"] != owned["key"]
    old = post(chat, owned, "owner_key", owner_key=owned["key"])
    assert (old.status_code, old.json["owner_key"]) == (401, None)
    assert post(chat, owned, "ban", owner_key=reply.json["owner_key"], username="bob").json[
        "succeeded"
    ]


def test_a_deleted_room_is_404_on_every_path(chat: ChatActions, owned: dict[str, str]) -> None:
    """On every server within 2 s (here, the other app: it knew the room)."""
    assert post(chat, owned, "delete_room", owner_key="forged").status_code == 401
    assert post(chat, owned, "delete_room", owner_key=owned["key"]).status_code == 200
    roomid = owned["roomid"]

    def statuses() -> set[int]:
        found = set()
        for _ in range(2):  # each request goes to the next app in turn
            for path in ("", "get_conversation", "messages", "settings", "events"):
                found.add(chat.client.get(f"/{roomid}/{path}").status_code)
            for path in ("login", "register", "message", "ticket", "logout", "delete_room"):
                found.add(chat.client.post(f"/{roomid}/{path}", json={}).status_code)
        return found

    deadline = time.monotonic() + 2
    while statuses() != {404} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert statuses() == {404}


def test_wrong_owner_keys_are_locked_out(store_url: str) -> None:
    app = create_app(
        {"TESTING": True, "STORE_URL": store_url, "RATELIMIT_OWNER_FAILURES": "3/minute"}
    )
    try:
        client = app.test_client()
        reply = client.post("/createroom", json={"alias": "guarded"})
        roomid, key = reply.json["roomid"], reply.json["owner_key"]
        statuses = [
            client.post(f"/{roomid}/settings", json={"owner_key": f"guess{n}"}).status_code
            for n in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        elsewhere = {"REMOTE_ADDR": "10.1.2.3"}
        others = client.post(f"/{roomid}/settings", json={"owner_key": key}, environ_base=elsewhere)
        assert others.status_code == 200  # another address is not locked out
        # The right key from the guessing address waits like the wrong ones.
        assert client.post(f"/{roomid}/settings", json={"owner_key": key}).status_code == 429
    finally:
        close_app(app)


@pytest.fixture
def served(app: Flask) -> Iterator[ServedApp]:
    with ServedApp(app) as served:
        yield served


def test_streams_carry_deletions_bans_and_the_end(
    chat: ChatActions, owned: dict[str, str], served: ServedApp
) -> None:
    roomid = owned["roomid"]
    with EventStream(served.url, f"/{roomid}/events") as stream:
        assert stream.next_event().event == "presence"
        post(chat, owned, "delete_message", id=owned["bob_said"], owner_key=owned["key"])
        deleted = stream.next_of("delete")
        assert deleted.data == {"id": owned["bob_said"]} and deleted.id
        post(chat, owned, "ban", owner_key=owned["key"], username="bob")
        assert stream.next_of("ban").data == {"username": "bob"}
        post(chat, owned, "unban", owner_key=owned["key"], username="bob")
        assert stream.next_of("unban").data == {"username": "bob"}
        post(chat, owned, "delete_room", owner_key=owned["key"])
        assert stream.next_of("gone").data == {}
        with pytest.raises(EOFError):
            stream.next_event()
    # A client resuming from before the deletion learns of it, not of the text.
    with EventStream(served.url, f"/{roomid}/events?after={owned['alice_said']}") as late:
        assert late.status == 404
