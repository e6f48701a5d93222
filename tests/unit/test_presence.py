"""Presence on every backend: each entry remembers the login that opened its
stream, a logout ends exactly those, and expired entries leave storage for good
instead of piling up."""

from __future__ import annotations

import sqlite3
import time

import pytest

import flaskchat.presence
from flaskchat import AuthenticationFailed, RoomStore
from flaskchat.backends.sqlite import MIGRATIONS
from flaskchat.presence import Presence, PresenceChange

PASSWORD = "correct horse battery"


def stored_presence(store: RoomStore, roomid: str) -> int:
    """How many presence entries the backend holds for the room, expired or not."""
    backend = store.backend
    kind = type(backend).__name__
    if kind == "MemoryBackend":
        return len(backend._rooms[roomid]["presence"])  # type: ignore[attr-defined]
    if kind == "SqliteBackend":
        with sqlite3.connect(backend.path) as conn:  # type: ignore[attr-defined]
            return int(conn.execute("SELECT COUNT(*) FROM presence").fetchone()[0])
    return int(backend.client.zcard(f"flaskchat:{{{roomid}}}:presence"))  # type: ignore[attr-defined]


def test_end_presence_removes_the_streams_of_one_session_only(room_store: RoomStore) -> None:
    roomid = room_store.create_room("sessions")
    backend = room_store.backend
    later = time.time() + 60
    backend.set_presence(roomid, "s1", "alice", later, "phone")
    backend.set_presence(roomid, "s2", "alice", later, "laptop")
    backend.set_presence(roomid, "s3", "bob", later, "bobs")
    backend.end_presence(roomid, "phone")
    assert backend.online(roomid, time.time()) == ["alice", "bob"]
    backend.end_presence(roomid, "laptop")
    assert backend.online(roomid, time.time()) == ["bob"]
    assert stored_presence(room_store, roomid) == 1


def test_expired_presence_is_deleted_not_only_hidden(room_store: RoomStore) -> None:
    roomid = room_store.create_room("comings and goings")
    backend = room_store.backend
    for n in range(20):
        backend.set_presence(roomid, f"gone{n}", f"user{n}", time.time() - 1, "")
    backend.set_presence(roomid, "here", "alice", time.time() + 60, "")
    assert stored_presence(room_store, roomid) == 1


def test_a_ticket_remembers_its_session_and_dies_with_the_login(room_store: RoomStore) -> None:
    roomid = room_store.create_room("tickets")
    room_store.register(roomid, "Alice", PASSWORD)
    token = room_store.login(roomid, "alice", PASSWORD)
    kept = room_store.issue_ticket(roomid, "alice", token)
    assert room_store.redeem_ticket(roomid, kept) == "Alice"
    unused = room_store.issue_ticket(roomid, "alice", token)
    room_store.logout(roomid, "alice", token)
    with pytest.raises(AuthenticationFailed):
        room_store.redeem_ticket(roomid, unused)


def test_a_file_from_before_sessions_keeps_its_tickets_and_presence(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """Tickets and presence written by the previous schema have no session: they
    keep working until they expire."""
    path = tmp_path / "old.sqlite3"  # type: ignore[operator]
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:4]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO rooms VALUES ('R' || hex(randomblob(10)), 'old')")
        (roomid,) = conn.execute("SELECT id FROM rooms").fetchone()
        conn.execute(
            "INSERT INTO presence VALUES (?, 'stream', 'alice', ?)", (roomid, time.time() + 60)
        )
        conn.execute(
            "INSERT INTO tickets VALUES ('digest', ?, 'alice', ?)", (roomid, time.time() + 60)
        )
    store = RoomStore.from_url(f"sqlite:///{path}")
    try:
        assert store.backend.online(roomid, time.time()) == ["alice"]
        assert store.backend.take_ticket(roomid, "digest", time.time()) == ("alice", "")
    finally:
        store.close()


def test_a_stream_hundreds_of_arrivals_behind_gets_only_the_change() -> None:
    """With a log of 256 changes, every stream of a room where 300 people arrived
    between two updates was sent the whole list again (5,000 arrivals: 5,000
    lists of thousands of names to each stream)."""
    store = RoomStore()
    roomid = store.create_room("arrivals")
    store.presence.open(roomid)
    opened, _ = store.presence.current(roomid)
    for n in range(300):
        store.presence.join(roomid, f"stream{n}", f"user{n:03}", "")
    version, change = store.presence.since(roomid, opened)
    assert change == PresenceChange([f"user{n:03}" for n in range(300)], [])
    assert version == opened + 300


def test_the_change_log_is_bounded_by_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound, a stream that far behind gets the whole list instead."""
    monkeypatch.setattr(flaskchat.presence, "CHANGE_LOG_NAMES", 50)
    store = RoomStore()
    roomid = store.create_room("crowd")
    store.presence.open(roomid)
    opened, _ = store.presence.current(roomid)
    for n in range(120):
        store.presence.join(roomid, f"stream{n}", f"user{n:03}", "")
    room = store.presence._rooms[roomid]
    assert room.logged_names <= 50 and len(room.log) <= 50
    _, whole = store.presence.since(roomid, opened)
    assert whole == Presence([f"user{n:03}" for n in range(120)])
    _, recent = store.presence.since(roomid, opened + 100)
    assert recent == PresenceChange([f"user{n:03}" for n in range(100, 120)], [])
