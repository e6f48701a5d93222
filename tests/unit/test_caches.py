"""Every in-process cache has a bound in bytes that no client can grow: streams
opened at many cursors, many rooms polled, long messages, many room ids."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
from flask import Flask

import flaskchat.rooms
import flaskchat.store
from flaskchat import RoomStore
from flaskchat.cache import ENTRY_OVERHEAD, BoundedCache
from flaskchat.store import Presence

from actions import ChatActions

PASSWORD = "correct horse battery"
LONG = "ж" * 1990  # near the longest message, in a script that takes 2 bytes a character


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"RATELIMIT_ENABLED": False}  # posts faster than any person


def test_a_bounded_cache_keeps_within_its_bytes_dropping_the_least_recently_used() -> None:
    cache = BoundedCache[str, str](3 * (ENTRY_OVERHEAD + sys.getsizeof("x" * 100)), sys.getsizeof)
    for name in "abc":
        cache.put(name, name * 100)
    assert cache.get("a") == "a" * 100  # now the most recently used
    cache.put("d", "d" * 100)
    assert cache.get("b") is None  # the least recently used went
    assert [cache.get(n) is not None for n in "acd"] == [True, True, True]
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    cache.put("huge", "h" * 10_000)  # larger than the whole budget: not kept
    assert cache.get("huge") is None and len(cache) == 3
    cache.put("a", "a")  # replacing an entry gives back its bytes
    cache.pop("c")
    assert cache.bytes == sum(ENTRY_OVERHEAD + sys.getsizeof(v) for v in ("a", "d" * 100))
    cache.clear()
    assert (cache.bytes, len(cache)) == (0, 0)


def test_streams_opened_at_many_cursors_keep_one_shared_read_per_room(
    room_store: RoomStore,
) -> None:
    """Each stream opened with another `after=` once left its whole replay batch
    (up to 200 messages) in the cache: about 1.5 MB a stream, until 10,000."""
    roomid = room_store.create_room("replayed")
    room_store.register(roomid, "alice", PASSWORD)
    token = room_store.login(roomid, "alice", PASSWORD)
    ids = [room_store.post_message(roomid, "alice", token, f"{n} {LONG}").id for n in range(30)]
    for cursor in ids[:20]:
        stream = room_store.follow(roomid, after=cursor, keepalive=60)
        assert isinstance(next(stream), Presence)
        assert next(stream).id != cursor  # type: ignore[union-attr]
        stream.close()
    assert len(room_store._wakeups) == 1
    assert room_store._wakeups.bytes <= flaskchat.store.SHARED_READ_BYTES


def test_every_store_cache_stays_within_its_budget(
    monkeypatch: pytest.MonkeyPatch, room_store: RoomStore
) -> None:
    budget = 64 * 1024
    for name in ("FORMATTED_BYTES", "CONVERSATION_BYTES", "SHARED_READ_BYTES"):
        monkeypatch.setattr(flaskchat.store, name, budget)
    monkeypatch.setattr(flaskchat.store, "SMALL_CACHE_BYTES", budget // 16)
    store = RoomStore(room_store.backend, hash_method="pbkdf2:sha256:1")  # hashing is not measured
    for n in range(40):
        roomid = store.create_room(f"room {n} " + "r" * 70)
        store.register(roomid, f"user{n}", PASSWORD)
        token = store.login(roomid, f"user{n}", PASSWORD)
        for _ in range(3):
            store.post_message(roomid, f"user{n}", token, LONG)
        store.conversation(roomid)
        store.online(roomid)
    caches: dict[str, tuple[BoundedCache[Any, Any], int]] = {
        "aliases": (store._aliases, budget // 16),
        "names": (store._names, budget // 16),
        "formatted": (store._formatted, budget),
        "conversations": (store._conversations, budget),
    }
    for name, (cache, limit) in caches.items():
        assert 0 < cache.bytes <= limit, name
        assert len(cache) < 40, name  # something had to go
    assert not store.presence._rooms  # presence is kept only for rooms with listeners


def test_polled_conversations_stay_within_the_encoded_budget(
    monkeypatch: pytest.MonkeyPatch, app: Flask, chat: ChatActions
) -> None:
    """The body cache once kept 1,024 bodies of up to 1.2 MB each."""
    small = BoundedCache[str, Any](256 * 1024, lambda entry: len(entry[1]))
    monkeypatch.setattr(flaskchat.rooms, "_encoded", small)
    for n in range(12):
        roomid = chat.create_room(f"polled {n}")
        token = chat.join(roomid, "alice")
        for _ in range(5):
            assert chat.say(roomid, "alice", token, LONG).status_code == 200
        first = chat.client.get(f"/{roomid}/get_conversation")
        assert first.status_code == 200 and len(first.data) > 50_000  # escaped: 6 bytes a char
        again = chat.client.get(
            f"/{roomid}/get_conversation", headers={"If-None-Match": first.headers["ETag"]}
        )
        assert again.status_code == 304
    encoded = flaskchat.rooms._encoded
    assert 0 < encoded.bytes <= 256 * 1024
    assert len(encoded) < 12


def test_room_signals_forget_rooms_nobody_listens_to(room_store: RoomStore) -> None:
    roomid = room_store.create_room("once busy")
    room_store.register(roomid, "alice", PASSWORD)
    token = room_store.login(roomid, "alice", PASSWORD)
    stream = room_store.follow(roomid, keepalive=60)
    next(stream)
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
    reader.start()
    room_store.post_message(roomid, "alice", token, "hello")
    reader.join(5)
    assert got and got[0].text == "hello"
    stream.close()
    time.sleep(0.1)
    room_store.signals.notify(roomid)  # as the watcher may, after the last listener left
    assert roomid not in room_store.signals._generations
    assert roomid not in room_store.signals._events
