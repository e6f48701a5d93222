"""`client_id` makes a retried send safe (DESIGN 1.2): the same id with the same
text is the same message, with another text it is a mistake (409)."""

from __future__ import annotations

import pytest

from flaskchat import ClientIdReused, RoomStore

from actions import ChatActions


@pytest.fixture
def room(chat: ChatActions) -> tuple[str, str]:
    roomid = chat.create_room()
    return roomid, chat.join(roomid, "alice")


def test_a_retry_with_the_same_text_returns_the_first_copy(
    chat: ChatActions, store: RoomStore, room: tuple[str, str]
) -> None:
    roomid, token = room
    first = chat.say(roomid, "alice", token, "hello", client_id="c-1")
    retry = chat.say(roomid, "alice", token, "  hello\n", client_id="c-1")  # the same, cleaned
    assert first.status_code == retry.status_code == 200
    assert retry.json["id"] == first.json["id"]
    assert len(store.conversation(roomid)) == 1


def test_the_same_client_id_with_another_text_is_a_conflict(
    chat: ChatActions, store: RoomStore, room: tuple[str, str]
) -> None:
    roomid, token = room
    first = chat.say(roomid, "alice", token, "meet at noon", client_id="c-1")
    reused = chat.say(roomid, "alice", token, "meet at one", client_id="c-1")
    assert reused.status_code == 409
    assert reused.json["succeeded"] is False
    assert "client_id" in reused.json["explanation"]
    [line] = store.conversation(roomid)
    assert line.endswith("<alice> meet at noon")
    again = chat.say(roomid, "alice", token, "meet at noon", client_id="c-1")
    assert (again.status_code, again.json["id"]) == (200, first.json["id"])


def test_a_client_id_belongs_to_one_user_in_one_room(
    chat: ChatActions, store: RoomStore, room: tuple[str, str]
) -> None:
    roomid, alice = room
    bob = chat.join(roomid, "bob")
    elsewhere = chat.create_room("elsewhere")
    alice_there = chat.join(elsewhere, "alice")
    replies = [
        chat.say(roomid, "alice", alice, "mine", client_id="c-1"),
        chat.say(roomid, "bob", bob, "his", client_id="c-1"),
        chat.say(elsewhere, "alice", alice_there, "over there", client_id="c-1"),
    ]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert len(store.conversation(roomid)) == 2
    assert store.conversation(elsewhere)[0].endswith("<alice> over there")


def test_the_store_raises_the_conflict_itself(store: RoomStore, room: tuple[str, str]) -> None:
    """Scripts that use `RoomStore` directly get the same rule as the API."""
    roomid, token = room
    store.post_message(roomid, "alice", token, "once", client_id="k")
    with pytest.raises(ClientIdReused) as raised:
        store.post_message(roomid, "alice", token, "twice", client_id="k")
    assert raised.value.status == 409
