"""Room owners on every backend (DESIGN 1.3): the owner key, deleting messages as
events of the log, bans, settings, retention, export and deleting a room, seen
from one store and from a second store on the same data, as two servers would."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import flaskchat.store
from flaskchat import (
    AuthenticationFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    RoomNotFound,
    RoomStore,
)
from flaskchat.backends.base import RoomDump, StoredMessage, UserRecord
from flaskchat.store import Message, Presence, RoomEvent

from support import backend_url

PASSWORD = "correct horse battery"
CHEAP = "pbkdf2:sha256:1"


@pytest.fixture
def url(backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(backend_kind, request, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[RoomStore]:
    opened = RoomStore.from_url(url, hash_method=CHEAP)
    yield opened
    opened.close()


@pytest.fixture
def other(url: str, backend_kind: str, store: RoomStore) -> Iterator[RoomStore]:
    """A second server on the same data (memory: the same backend, another store)."""
    if backend_kind == "memory":
        opened = RoomStore(store.backend, hash_method=CHEAP)
        yield opened
        return
    opened = RoomStore.from_url(url, hash_method=CHEAP)
    yield opened
    opened.close()


def member(store: RoomStore, roomid: str, name: str) -> str:
    store.register(roomid, name, PASSWORD)
    return store.login(roomid, name, PASSWORD)


def stored_text(store: RoomStore, text: str) -> bool:
    """Whether `text` is anywhere in the store's storage, not only its answers."""
    backend: Any = store.backend
    kind = type(backend).__name__
    if kind == "SqliteBackend":
        found = False
        for suffix in ("", "-wal"):
            path = Path(f"{backend.path}{suffix}")
            if path.exists():
                found |= text.encode() in path.read_bytes()
        return found
    if kind == "RedisBackend":
        client = backend.client
        for key in client.scan_iter("flaskchat:*"):
            if client.type(key) == "stream":
                for _, fields in client.xrange(key):
                    found = text in fields.values()
                    if found:
                        return True
        return False
    return any(text in repr(room) for room in backend._rooms.values())


def next_item(stream: Iterator[Any], timeout: float = 5) -> Any:
    """The stream's next item, from a thread, so a missing one fails the test."""
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(next(stream, "ended")), daemon=True)
    thread.start()
    thread.join(timeout)
    assert got, "the stream gave nothing"
    return got[0]


def test_a_new_room_has_an_owner_key_stored_only_as_its_digest(store: RoomStore) -> None:
    room = store.new_room("owned")
    settings = store.backend.room_settings(room.roomid)
    assert settings.owner_digest == hashlib.sha256(room.owner_key.encode()).hexdigest()
    assert not stored_text(store, room.owner_key)
    assert store.settings(room.roomid, room.owner_key).banned == []
    with pytest.raises(AuthenticationFailed):
        store.settings(room.roomid, "x" + room.owner_key)
    assert store.create_room("the seed's way")  # a plain room id, as before


def test_a_rotated_key_replaces_the_old_one(store: RoomStore, other: RoomStore) -> None:
    room = store.new_room("rotate")
    new_key = store.rotate_owner_key(room.roomid, room.owner_key)
    with pytest.raises(AuthenticationFailed):
        other.rotate_owner_key(room.roomid, room.owner_key)
    issued = other.issue_owner_key(room.roomid)  # an operator's
    with pytest.raises(AuthenticationFailed):
        store.settings(room.roomid, new_key)
    assert store.settings(room.roomid, issued).banned == []


def test_authors_and_owners_delete_messages_as_events(store: RoomStore, other: RoomStore) -> None:
    room = store.new_room("deletions")
    roomid = room.roomid
    alice, bob = member(store, roomid, "alice"), member(store, roomid, "bob")
    ids = [store.post_message(roomid, "alice", alice, f"alice {n}").id for n in range(55)]
    bobs = store.post_message(roomid, "bob", bob, "bob's secret words").id
    listener = other.follow(roomid, after=bobs, keepalive=60)
    assert isinstance(next(listener), Presence)
    before = store.backend.latest_message_id(roomid)

    with pytest.raises(Forbidden):
        other.delete_message(roomid, bobs, username="alice", token=alice)
    with pytest.raises(AuthenticationFailed):
        store.delete_message(roomid, bobs, username="bob", token="forged")
    with pytest.raises(AuthenticationFailed):
        store.delete_message(roomid, bobs, owner_key="forged")
    other.delete_message(roomid, bobs, username="bob", token=bob)
    deleted = next_item(listener)
    assert isinstance(deleted, RoomEvent)
    assert (deleted.kind, deleted.subject) == ("delete", bobs)
    store.delete_message(roomid, ids[-1], owner_key=room.owner_key)
    assert next_item(listener).subject == ids[-1]
    listener.close()

    with pytest.raises(NotFound):
        store.delete_message(roomid, bobs, owner_key=room.owner_key)  # gone already
    with pytest.raises(InvalidInput):
        store.delete_message(roomid, "not an id", owner_key=room.owner_key)

    assert store.backend.latest_message_id(roomid) != before  # caches and ETags move on
    lines = other.conversation(roomid)
    assert len(lines) == 50  # still the last 50 visible lines
    assert lines[-1].endswith("alice 53") and lines[0].endswith("alice 4")
    page = store.messages(roomid, limit=200)
    assert [m.id for m in page.messages] == ids[:-1]
    assert [m.id for m in store.messages(roomid, after=ids[-2]).messages] == []
    assert not stored_text(store, "bob's secret words")
    assert not stored_text(store, "alice 54")
    # The log keeps the deletions, in order: a stream resuming before them learns of both.
    replay = store.follow(roomid, after=ids[-2], keepalive=60)
    next(replay)
    assert [next(replay).subject, next(replay).subject] == [bobs, ids[-1]]  # type: ignore[union-attr]
    replay.close()


def test_a_ban_ends_a_member_everywhere_until_lifted(store: RoomStore, other: RoomStore) -> None:
    room = store.new_room("bans")
    roomid, key = room.roomid, room.owner_key
    token = member(store, roomid, "Bob")
    store.post_message(roomid, "bob", token, "hello")
    present = other.follow(roomid, username="Bob", keepalive=60)
    assert next(present) == Presence(["Bob"])
    watcher = store.follow(roomid, keepalive=60)
    assert next(watcher) == Presence(["Bob"])

    with pytest.raises(AuthenticationFailed):
        store.ban(roomid, "forged", "bob")
    with pytest.raises(NotFound):
        store.ban(roomid, key, "nobody")
    other.ban(roomid, key, "BOB")  # by name, whatever its case
    event = next_item(watcher)
    assert isinstance(event, RoomEvent) and (event.kind, event.subject) == ("ban", "Bob")
    store.presence.changed(roomid)
    assert store.online(roomid) == []  # presence ended at once
    with pytest.raises(Forbidden):
        store.post_message(roomid, "bob", token, "still here?")
    with pytest.raises(Forbidden):
        other.login(roomid, "bob", PASSWORD)
    with pytest.raises(Forbidden):
        store.register(roomid, "bOb", PASSWORD)
    assert store.settings(roomid, key).banned == ["Bob"]
    assert store.settings(roomid).banned is None  # the list is the owner's to see
    watcher.close()
    present.close()

    store.unban(roomid, key, "bob")
    with pytest.raises(NotFound):
        store.unban(roomid, key, "bob")
    token = other.login(roomid, "bob", PASSWORD)  # a new login: the old tokens stay revoked
    assert store.post_message(roomid, "bob", token, "back").text == "back"


def test_closed_registration_keeps_members(store: RoomStore, other: RoomStore) -> None:
    room = store.new_room("closed")
    member(store, room.roomid, "alice")
    changed = store.update_settings(room.roomid, room.owner_key, registration="closed")
    assert (changed.registration_open, changed.banned) == (False, [])
    with pytest.raises(Forbidden, match="closed"):
        other.register(room.roomid, "newcomer", PASSWORD)
    assert other.login(room.roomid, "alice", PASSWORD)
    with pytest.raises(InvalidInput):
        store.update_settings(room.roomid, room.owner_key, registration="ajar")
    for days in (0, 3651, "7", True, 1.5):
        with pytest.raises(InvalidInput):
            store.update_settings(room.roomid, room.owner_key, retention_days=days)
    store.update_settings(room.roomid, room.owner_key, registration="open", retention_days=None)
    other.register(room.roomid, "newcomer", PASSWORD)


def old_room(store: RoomStore, days_ago: list[int]) -> str:
    """A room whose messages were written `days_ago` (restored, as `store copy` does)."""
    roomid = "R" * 21 + str(len(days_ago) % 10)
    now = datetime.now(UTC)
    dump = RoomDump(
        roomid,
        "old",
        users={"alice": UserRecord("alice", "x")},
        messages=[
            StoredMessage(str(n), now - timedelta(days=d, minutes=1), "alice", f"{d} days ago")
            for n, d in enumerate(days_ago)
        ],
    )
    dump.settings.owner_digest = hashlib.sha256(b"key").hexdigest()
    store.backend.restore_room(dump)
    return roomid


def test_retention_removes_older_messages_for_good(store: RoomStore, other: RoomStore) -> None:
    roomid = old_room(store, [40, 31, 20, 3, 0])
    before = other.conversation(roomid)
    assert len(before) == 5
    store.update_settings(roomid, "key", retention_days=30)
    assert [line.split("> ", 1)[1] for line in other.conversation(roomid)] == [
        "20 days ago",
        "3 days ago",
        "0 days ago",
    ]
    assert not stored_text(store, "40 days ago")
    assert store.settings(roomid).retention_days == 30


def test_export_reads_a_batch_at_a_time(store: RoomStore, monkeypatch: pytest.MonkeyPatch) -> None:
    room = store.new_room("export")
    token = member(store, room.roomid, "alice")
    posted = [store.post_message(room.roomid, "alice", token, f"m{n}").id for n in range(23)]
    reads: list[int] = []
    real = store.backend.messages_after

    def counted(roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        reads.append(limit)
        return real(roomid, after, limit)

    monkeypatch.setattr(flaskchat.store, "EXPORT_BATCH", 5)
    monkeypatch.setattr(store.backend, "messages_after", counted)
    with pytest.raises(AuthenticationFailed):
        store.export(room.roomid, "forged")
    exported = store.export(room.roomid, room.owner_key)
    first = next(exported)
    assert isinstance(first, Message) and first.id == posted[0]
    assert reads == [5]  # nothing read ahead of the consumer
    assert [first.id, *(m.id for m in exported)] == posted
    assert reads == [5] * 5 + [5]


def test_an_export_of_many_messages_needs_the_memory_of_one_batch(tmp_path: Path) -> None:
    store = RoomStore.from_url(f"sqlite:///{tmp_path / 'big.sqlite3'}")
    try:
        now = datetime.now(UTC)
        texts = [f"{n:06d} " + "x" * 200 for n in range(20_000)]
        dump = RoomDump("B" * 22, "big", messages=[StoredMessage("0", now, "a", t) for t in texts])
        dump.settings.owner_digest = hashlib.sha256(b"key").hexdigest()
        store.backend.restore_room(dump)
        tracemalloc.start()
        count = sum(1 for _ in store.export("B" * 22, "key"))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        store.close()
    assert count == 20_000
    assert peak < 2_000_000, peak  # the messages themselves are over 4 MB of text


def test_a_deleted_room_is_gone_everywhere_for_good(
    store: RoomStore, other: RoomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = store.new_room("doomed")
    roomid = room.roomid
    token = member(store, roomid, "alice")
    store.post_message(roomid, "alice", token, "the last words")
    assert other.alias(roomid) == "doomed"  # known there, and cached
    listener = other.follow(roomid, username="alice", keepalive=60)
    assert isinstance(next(listener), Presence)
    with pytest.raises(AuthenticationFailed):
        store.delete_room(roomid, "forged")
    store.delete_room(roomid, room.owner_key)

    gone = next_item(listener)
    assert isinstance(gone, RoomEvent) and gone.kind == "gone"
    assert next_item(listener) == "ended"
    with pytest.raises(RoomNotFound):
        store.alias(roomid)
    deadline = time.monotonic() + 2  # another server's cache lets go within 2 s
    while time.monotonic() < deadline:
        try:
            other.alias(roomid)
        except RoomNotFound:
            break
        time.sleep(0.05)
    with pytest.raises(RoomNotFound):
        other.conversation(roomid)
    with pytest.raises(RoomNotFound):
        other.login(roomid, "alice", PASSWORD)
    assert roomid not in store.room_ids()
    assert not store.backend.create_room(roomid, "again")  # never used again
    assert not stored_text(store, "the last words")
    assert not stored_text(store, "doomed")


def test_a_file_from_before_owners_keeps_working(tmp_path: Path) -> None:
    """Rooms made before ownership have no owner key: nothing matches it, and an
    operator can issue one."""
    from flaskchat.backends.sqlite import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:5]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 5")
        conn.execute("INSERT INTO rooms (id, alias) VALUES (?, 'old')", ("O" * 22,))
        conn.execute(
            "INSERT INTO messages (room_id, name_key, username, body, posted_at_us)"
            " VALUES (?, 'al', 'al', 'kept', ?)",
            ("O" * 22, int(time.time() * 1e6)),
        )
    store = RoomStore.from_url(f"sqlite:///{path}")
    try:
        assert store.conversation("O" * 22)[0].endswith("<al> kept")
        with pytest.raises(AuthenticationFailed):
            store.settings("O" * 22, "")
        key = store.issue_owner_key("O" * 22)
        assert store.settings("O" * 22, key).registration_open
    finally:
        store.close()
    assert os.path.exists(path)
