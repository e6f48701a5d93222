"""The behaviour every backend must share, driven through `RoomStore` with no app."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flaskchat import (
    AuthenticationFailed,
    ClientIdReused,
    InvalidInput,
    LimitReached,
    RoomNotFound,
    RoomStore,
    UsernameTaken,
)
from flaskchat.backends.base import AddedUser, UserRecord
from flaskchat.store import Presence

from support import backend_url

PASSWORD = "correct horse battery"
LINE = re.compile(r"^\d\d-\d\d-\d\d \d\d:\d\d:\d\d <(?P<user>[^>]+)> (?P<text>.*)$", re.S)


def joined(store: RoomStore, roomid: str, username: str) -> str:
    store.register(roomid, username, PASSWORD)
    return store.login(roomid, username, PASSWORD)


def test_room_ids_are_random_and_url_safe(room_store: RoomStore) -> None:
    ids = {room_store.create_room("room") for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", roomid) for roomid in ids)


def test_alias_is_kept_stripped_and_unknown_rooms_are_refused(room_store: RoomStore) -> None:
    roomid = room_store.create_room("  Bob and Al's Example Chat Room ")
    assert room_store.alias(roomid) == "Bob and Al's Example Chat Room"
    with pytest.raises(RoomNotFound):
        room_store.alias("A" * 22)
    with pytest.raises(RoomNotFound):
        room_store.alias("../../etc/passwd")


def test_register_login_post_and_read(room_store: RoomStore) -> None:
    roomid = room_store.create_room("chat")
    token = joined(room_store, roomid, "alice")
    posted = room_store.post_message(roomid, "alice", token, "  what's going on?  ")
    assert posted.text == "what's going on?"
    [line] = room_store.conversation(roomid)
    match = LINE.match(line)
    assert match is not None and match["user"] == "alice"
    assert match["text"] == "what's going on?"
    assert line == posted.line


def test_line_uses_the_seed_time_format_in_the_configured_zone() -> None:
    store = RoomStore(timezone_name="Asia/Tokyo")
    roomid = store.create_room("tz")
    token = joined(store, roomid, "alice")
    posted = store.post_message(roomid, "alice", token, "hi")
    tokyo = posted.posted_at.astimezone(store.tz).strftime("%y-%m-%d %H:%M:%S")
    assert posted.line == f"{tokyo} <alice> hi"
    assert posted.posted_at.tzinfo is not None
    assert abs((datetime.now(UTC) - posted.posted_at).total_seconds()) < 60


def test_conversation_is_the_last_fifty_oldest_first(room_store: RoomStore) -> None:
    roomid = room_store.create_room("busy")
    token = joined(room_store, roomid, "alice")
    for n in range(60):
        room_store.post_message(roomid, "alice", token, f"message {n}")
    lines = room_store.conversation(roomid)
    assert [LINE.match(line)["text"] for line in lines] == [  # type: ignore[index]
        f"message {n}" for n in range(10, 60)
    ]


def test_a_conversation_snapshot_is_reused_until_the_room_changes(
    room_store: RoomStore, backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    roomid = room_store.create_room("snap")
    token = joined(room_store, roomid, "alice")
    room_store.post_message(roomid, "alice", token, "one")
    first = room_store.conversation_snapshot(roomid)
    assert room_store.conversation_snapshot(roomid) is first
    assert [LINE.match(line)["text"] for line in first.lines] == ["one"]  # type: ignore[index]
    room_store.post_message(roomid, "alice", token, "two")
    second = room_store.conversation_snapshot(roomid)
    assert second.version != first.version and len(second.lines) == 2
    assert room_store.conversation_snapshot(roomid, limit=1).lines == second.lines[-1:]
    if backend_kind == "memory":
        return
    # A write by another store on the same data (another process) is seen at once.
    other = RoomStore.from_url(backend_url(backend_kind, request, tmp_path))
    try:
        other.post_message(roomid, "alice", token, "three")
    finally:
        other.close()
    third = room_store.conversation_snapshot(roomid)
    assert [LINE.match(line)["text"] for line in third.lines] == ["one", "two", "three"]  # type: ignore[index]


def test_rooms_do_not_share_users_or_messages(room_store: RoomStore) -> None:
    room_a, room_b = room_store.create_room("A"), room_store.create_room("B")
    token = joined(room_store, room_a, "tom1")
    room_store.post_message(room_a, "tom1", token, "only in A")
    with pytest.raises(AuthenticationFailed):
        room_store.login(room_b, "tom1", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        room_store.post_message(room_b, "tom1", token, "sneaking into B")
    assert room_store.conversation(room_b) == []
    joined(room_store, room_b, "tom1")  # the name is free in B


def test_usernames_are_unique_without_regard_to_case(room_store: RoomStore) -> None:
    roomid = room_store.create_room("case")
    assert room_store.register(roomid, "Tom", PASSWORD) == "Tom"
    with pytest.raises(UsernameTaken):
        room_store.register(roomid, "tom", PASSWORD)
    with pytest.raises(UsernameTaken):
        room_store.register(roomid, "ＴＯＭ", PASSWORD)  # fullwidth, NFKC-equal
    token = room_store.login(roomid, "TOM", PASSWORD)
    posted = room_store.post_message(roomid, "tom", token, "hi")
    assert posted.username == "Tom"  # shown as typed at registration


def test_concurrent_registrations_of_one_name_store_one_account(room_store: RoomStore) -> None:
    roomid = room_store.create_room("race")
    outcomes: list[str] = []

    def attempt(name: str) -> None:
        try:
            room_store.register(roomid, name, PASSWORD)
            outcomes.append("ok")
        except UsernameTaken:
            outcomes.append("taken")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in ("eve", "Eve", "EVE", "eVe")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok", "taken", "taken", "taken"]


def test_login_failures_say_the_same_for_unknown_user_and_wrong_password(
    room_store: RoomStore,
) -> None:
    roomid = room_store.create_room("auth")
    room_store.register(roomid, "alice", PASSWORD)
    with pytest.raises(AuthenticationFailed) as wrong_password:
        room_store.login(roomid, "alice", "not the password")
    with pytest.raises(AuthenticationFailed) as unknown_user:
        room_store.login(roomid, "mallory", PASSWORD)
    with pytest.raises(AuthenticationFailed) as invalid_name:
        room_store.login(roomid, "<script>", PASSWORD)
    assert wrong_password.value.explanation == unknown_user.value.explanation
    assert invalid_name.value.explanation == unknown_user.value.explanation


def test_tokens_are_random_per_login_and_never_stored_in_clear(room_store: RoomStore) -> None:
    roomid = room_store.create_room("tokens")
    room_store.register(roomid, "alice", PASSWORD)
    first = room_store.login(roomid, "alice", PASSWORD)
    second = room_store.login(roomid, "alice", PASSWORD)
    assert first != second and len(first) >= 43
    dump = room_store.backend.dump_room(roomid)
    stored = repr(dump)
    assert first not in stored and second not in stored and PASSWORD not in stored
    assert dump.users["alice"].password_hash.startswith("scrypt:")
    assert len(dump.tokens["alice"]) == 2


def test_logout_revokes_only_that_token(room_store: RoomStore) -> None:
    roomid = room_store.create_room("devices")
    room_store.register(roomid, "alice", PASSWORD)
    phone = room_store.login(roomid, "alice", PASSWORD)
    laptop = room_store.login(roomid, "alice", PASSWORD)
    room_store.logout(roomid, "alice", phone)
    with pytest.raises(AuthenticationFailed):
        room_store.post_message(roomid, "alice", phone, "from the phone")
    with pytest.raises(AuthenticationFailed):
        room_store.logout(roomid, "alice", phone)  # replayed
    room_store.post_message(roomid, "alice", laptop, "from the laptop")
    assert len(room_store.conversation(roomid)) == 1


def test_another_users_token_is_refused(room_store: RoomStore) -> None:
    roomid = room_store.create_room("impersonation")
    alice = joined(room_store, roomid, "alice")
    joined(room_store, roomid, "bob")
    with pytest.raises(AuthenticationFailed):
        room_store.post_message(roomid, "bob", alice, "I am bob")
    with pytest.raises(AuthenticationFailed):
        room_store.post_message(roomid, "bob", "forged-token", "I am bob")
    assert room_store.conversation(roomid) == []


def test_a_retry_with_the_same_client_id_stores_one_copy(room_store: RoomStore) -> None:
    roomid = room_store.create_room("retries")
    alice = joined(room_store, roomid, "alice")
    bob = joined(room_store, roomid, "bob")
    first = room_store.post_message(roomid, "alice", alice, "once", client_id="c-1")
    again = room_store.post_message(roomid, "alice", alice, "once", client_id="c-1")
    with pytest.raises(ClientIdReused):  # another text under the same client_id
        room_store.post_message(roomid, "alice", alice, "twice?", client_id="c-1")
    other_user = room_store.post_message(roomid, "bob", bob, "mine", client_id="c-1")
    assert again.id == first.id and again.text == "once"
    assert other_user.id != first.id
    assert len(room_store.conversation(roomid)) == 2


@pytest.mark.parametrize(
    ("alias", "fragment"),
    [
        ("", "name"),
        ("   ", "name"),
        ("x" * 81, "80"),
        ("tab\there", "control"),
        ("bad\ud800", "not valid text"),
    ],
)
def test_bad_aliases_are_refused(room_store: RoomStore, alias: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        room_store.create_room(alias)
    assert list(room_store.backend.room_ids()) == []


@pytest.mark.parametrize(
    ("username", "password", "fragment"),
    [
        ("", PASSWORD, "username"),
        ("x" * 33, PASSWORD, "32"),
        ("al ice", PASSWORD, "letters"),
        ("<b>", PASSWORD, "letters"),
        ("nul\x00", PASSWORD, "letters"),
        ("alice", "short", "at least 8"),
        ("alice", "x" * 1025, "1024"),
        ("alice", "pass\udfffword", "not valid text"),
    ],
)
def test_bad_accounts_are_refused(
    room_store: RoomStore, username: str, password: str, fragment: str
) -> None:
    roomid = room_store.create_room("validation")
    with pytest.raises(InvalidInput, match=fragment):
        room_store.register(roomid, username, password)
    assert room_store.backend.dump_room(roomid).users == {}


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("", "empty"),
        (" \n\t ", "empty"),
        ("x" * 2001, "2000"),
        ("bell\x07", "control"),
        ("esc\x1b[31m", "control"),
        ("half\ud83d", "not valid text"),
    ],
)
def test_bad_messages_are_refused(room_store: RoomStore, message: str, fragment: str) -> None:
    roomid = room_store.create_room("messages")
    token = joined(room_store, roomid, "alice")
    with pytest.raises(InvalidInput, match=fragment):
        room_store.post_message(roomid, "alice", token, message)
    assert room_store.conversation(roomid) == []


def test_messages_keep_unicode_newlines_tabs_and_markup_verbatim(room_store: RoomStore) -> None:
    roomid = room_store.create_room("unicode ✓ 房间")
    token = joined(room_store, roomid, "Zoë_山田")
    text = "line one\n\tline two <b>&amp;</b> 🎉 \u202e"
    posted = room_store.post_message(roomid, "zoë_山田", token, text)
    assert posted.text == text
    assert room_store.conversation(roomid)[-1].endswith(f"<Zoë_山田> {text}")
    assert room_store.alias(roomid) == "unicode ✓ 房间"


def test_snapshot_has_the_seed_shape_without_secrets(room_store: RoomStore) -> None:
    roomid = room_store.create_room("Bob and Al's Example Chat Room")
    token = joined(room_store, roomid, "usernameA")
    joined(room_store, roomid, "usernameB")
    room_store.post_message(roomid, "usernameA", token, "what's going on?")
    snapshot = room_store.snapshot()
    assert set(snapshot) == {roomid}
    room = snapshot[roomid]
    assert room["alias"] == "Bob and Al's Example Chat Room"
    assert set(room["users"]) == {"usernameA", "usernameB"}
    assert [LINE.match(m)["text"] for m in room["messages"]] == ["what's going on?"]  # type: ignore[index]
    assert token not in repr(snapshot) and "scrypt" not in repr(snapshot)


def test_message_ids_increase_within_a_room(room_store: RoomStore) -> None:
    roomid = room_store.create_room("ids")
    token = joined(room_store, roomid, "alice")
    ids = [room_store.post_message(roomid, "alice", token, str(n)).id for n in range(5)]
    assert len(set(ids)) == 5
    assert [line.rsplit(" ", 1)[1] for line in room_store.conversation(roomid)] == list("01234")


def test_history_pages_cover_everything_once(room_store: RoomStore) -> None:
    roomid = room_store.create_room("pages")
    token = joined(room_store, roomid, "alice")
    posted = [room_store.post_message(roomid, "alice", token, f"m{n}").id for n in range(23)]
    collected: list[str] = []
    page = room_store.messages(roomid, limit=5)
    collected[:0] = [m.id for m in page.messages]
    while page.more:
        page = room_store.messages(roomid, before=page.messages[0].id, limit=5)
        collected[:0] = [m.id for m in page.messages]
    assert collected == posted
    forward = room_store.messages(roomid, after=posted[20], limit=5)
    assert ([m.id for m in forward.messages], forward.more) == (posted[21:], False)
    with pytest.raises(InvalidInput):
        room_store.messages(roomid, before="not-an-id")
    with pytest.raises(InvalidInput):
        room_store.messages(roomid, limit=201)


def test_follow_replays_then_waits_for_new_messages(room_store: RoomStore) -> None:
    roomid = room_store.create_room("live")
    token = joined(room_store, roomid, "alice")
    first = room_store.post_message(roomid, "alice", token, "first")
    room_store.post_message(roomid, "alice", token, "second")
    stream = room_store.follow(roomid, after=first.id, keepalive=30)
    assert next(stream) == Presence([])
    assert next(stream).text == "second"  # type: ignore[union-attr]
    threading.Timer(0.2, room_store.post_message, (roomid, "alice", token, "third")).start()
    assert next(stream).text == "third"  # type: ignore[union-attr]
    stream.close()
    with pytest.raises(InvalidInput):
        room_store.follow(roomid, after="nonsense")


def test_tickets_name_their_user_once(room_store: RoomStore) -> None:
    roomid = room_store.create_room("tickets")
    token = joined(room_store, roomid, "Alice")
    ticket = room_store.issue_ticket(roomid, "alice", token)
    assert room_store.redeem_ticket(roomid, ticket) == "Alice"
    with pytest.raises(AuthenticationFailed):
        room_store.redeem_ticket(roomid, ticket)
    with pytest.raises(AuthenticationFailed):
        room_store.issue_ticket(roomid, "alice", "forged")


def test_presence_lasts_while_a_stream_is_open(room_store: RoomStore) -> None:
    roomid = room_store.create_room("presence")
    stream = room_store.follow(roomid, username="alice", keepalive=30)
    assert next(stream) == Presence(["alice"])
    assert room_store.backend.online(roomid, time.time()) == ["alice"]
    stream.close()
    assert room_store.backend.online(roomid, time.time()) == ["alice"]  # grace period
    assert room_store.backend.online(roomid, time.time() + 11) == []


def test_a_room_holds_a_bounded_number_of_accounts(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = RoomStore.from_url(
        backend_url(backend_kind, request, tmp_path),
        max_users_per_room=3,
        hash_method="scrypt:1024:8:1",
    )
    roomid = store.create_room("small")
    for name in ("a", "b", "c"):
        store.register(roomid, name, PASSWORD)
    with pytest.raises(LimitReached, match="limit of 3 accounts"):
        store.register(roomid, "d", PASSWORD)
    assert set(store.snapshot()[roomid]["users"]) == {"a", "b", "c"}
    store.close()


def test_logging_in_past_the_device_limit_logs_the_oldest_device_out(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = RoomStore.from_url(
        backend_url(backend_kind, request, tmp_path),
        max_tokens_per_user=3,
        hash_method="scrypt:1024:8:1",
    )
    roomid = store.create_room("devices")
    store.register(roomid, "alice", PASSWORD)
    tokens = []
    for _ in range(5):
        tokens.append(store.login(roomid, "alice", PASSWORD))
        time.sleep(0.002)  # distinct creation times on every backend
    assert len(store.backend.token_digests(roomid, "alice")) == 3
    for old in tokens[:2]:
        with pytest.raises(AuthenticationFailed):
            store.post_message(roomid, "alice", old, "from an old device")
    for recent in tokens[2:]:
        store.post_message(roomid, "alice", recent, "from a recent device")
    store.close()


def test_times_never_go_backwards_along_ids(room_store: RoomStore) -> None:
    roomid = room_store.create_room("busy")
    tokens = {name: joined(room_store, roomid, name) for name in ("a", "b", "c", "d")}

    def send(name: str) -> None:
        for n in range(10):
            room_store.post_message(roomid, name, tokens[name], f"{name}{n}")

    threads = [threading.Thread(target=send, args=(name,)) for name in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = room_store.messages(roomid, limit=200).messages
    assert len(history) == 40
    times = [message.posted_at for message in history]
    assert times == sorted(times)


def test_concurrent_registrations_never_pass_the_account_cap(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = RoomStore.from_url(
        backend_url(backend_kind, request, tmp_path),
        max_users_per_room=5,
        hash_method="pbkdf2:sha256:1",
    )
    roomid = store.create_room("crowded")
    start = threading.Barrier(40)
    outcomes: list[str] = []

    def attempt(name: str) -> None:
        start.wait()
        try:
            store.register(roomid, name, PASSWORD)
            outcomes.append("ok")
        except LimitReached:
            outcomes.append("full")

    threads = [threading.Thread(target=attempt, args=(f"user{n}",)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 5 and outcomes.count("full") == 35
    assert len(store.snapshot()[roomid]["users"]) == 5
    store.close()


def test_a_backend_refuses_an_account_beyond_the_cap_in_one_step(room_store: RoomStore) -> None:
    backend = room_store.backend
    roomid = room_store.create_room("cap")
    record = UserRecord("x", "hash")
    assert backend.add_user(roomid, "a", record, max_users=2) is AddedUser.ADDED
    assert backend.add_user(roomid, "a", record, max_users=2) is AddedUser.NAME_TAKEN
    assert backend.add_user(roomid, "b", record, max_users=2) is AddedUser.ADDED
    assert backend.add_user(roomid, "c", record, max_users=2) is AddedUser.ROOM_FULL
    assert backend.count_users(roomid) == 2
