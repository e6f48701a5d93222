"""Look-alike names over HTTP, on SQLite and Redis: a name that mixes scripts is a
400, a name that looks like one already in the room is a 409 that says so, names
written with combining marks register, and accounts from before still log in."""

from __future__ import annotations

import pytest
from werkzeug.security import generate_password_hash

from flaskchat import RoomStore, rules
from flaskchat.backends.base import AddedUser, UserRecord

from actions import PASSWORD, ChatActions


@pytest.fixture
def app_config() -> dict[str, object]:
    return {"PASSWORD_HASH_METHOD": "scrypt:1024:8:1", "RATELIMIT_ENABLED": False}


def test_a_name_mixing_scripts_is_400(chat: ChatActions) -> None:
    roomid = chat.create_room()
    assert chat.register(roomid, "admin").status_code == 200
    response = chat.register(roomid, "аdmin")  # Cyrillic а
    assert response.status_code == 400
    assert response.json["succeeded"] is False
    assert "Cyrillic and Latin" in response.json["explanation"]


@pytest.mark.parametrize("lookalike", ["admın", "ADMİN", "Admın"])
def test_a_look_alike_of_a_member_is_409(chat: ChatActions, lookalike: str) -> None:
    roomid = chat.create_room()
    assert chat.register(roomid, "admin").status_code == 200
    response = chat.register(roomid, lookalike)
    assert response.status_code == 409
    assert response.json == {
        "succeeded": False,
        "explanation": f"The name {lookalike} looks too much like admin, "
        "a name already in this room.",
    }


def test_a_single_script_look_alike_is_409(chat: ChatActions) -> None:
    roomid = chat.create_room()
    assert chat.register(roomid, "ace").status_code == 200
    response = chat.register(roomid, "асе")  # every letter Cyrillic
    assert response.status_code == 409
    assert "looks too much like ace" in response.json["explanation"]


@pytest.mark.parametrize("name", ["हिन्दी", "วิชัย", "محمّد"])
def test_names_with_combining_marks_register_log_in_and_post(chat: ChatActions, name: str) -> None:
    roomid = chat.create_room()
    response = chat.register(roomid, name)
    assert (response.status_code, response.json["succeeded"]) == (200, True)
    token = chat.login(roomid, name)
    assert chat.say(roomid, name, token, "नमस्ते").status_code == 200
    [line] = chat.client.get(f"/{roomid}/get_conversation").json
    assert line.endswith(f"<{name}> नमस्ते")
    again = chat.register(roomid, name)
    assert again.status_code == 409


def test_a_stray_mark_is_400_not_500(chat: ChatActions) -> None:
    roomid = chat.create_room()
    for name in ["\u0301x", "x\u0301\u0302\u0303\u0304\u0305", "\u3164"]:
        response = chat.register(roomid, name)
        assert response.status_code == 400, name
        assert response.json["succeeded"] is False
        assert response.json["explanation"]


def test_an_account_from_before_still_logs_in(chat: ChatActions, store: RoomStore) -> None:
    """The rules apply to new names only: a mixed-script account made before them
    logs in, posts and logs out as ever."""
    roomid = chat.create_room()
    old = "pаypal"  # Cyrillic а
    record = UserRecord(old, generate_password_hash(PASSWORD, method="scrypt:1024:8:1"))
    added = store.backend.add_user(roomid, rules.username_key(old), record, 10)
    assert added is AddedUser.ADDED
    token = chat.login(roomid, old)
    assert chat.say(roomid, old, token, "still here").status_code == 200
    logout = chat.client.post(f"/{roomid}/logout", json={"username": old, "token": token})
    assert logout.status_code == 200
