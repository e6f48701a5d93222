"""What one listener costs while nothing happens, and how soon it hears of what
does: idle streams sleep, new messages wake them at once on every store, and a
listener whose connection is gone stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import flaskchat.presence
import flaskchat.store
from flaskchat import RoomStore
from flaskchat.store import Message, Presence, StreamItem


class Waits:
    """Counts how often listeners go to sleep: a listener that loops without
    sleeping calls `RoomSignals.wait` thousands of times a second."""

    def __init__(self, store: RoomStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store.signals.wait

        def counted(roomid: str, seen: int, timeout: float) -> int:
            self.count += 1
            return real(roomid, seen, timeout)

        monkeypatch.setattr(store.signals, "wait", counted)


def next_in_thread(stream: Iterator[StreamItem]) -> tuple[threading.Thread, list[StreamItem]]:
    """Ask for the stream's next item in a thread: it blocks until something comes."""
    results: list[StreamItem] = []
    thread = threading.Thread(target=lambda: results.append(next(stream)), daemon=True)
    thread.start()
    return thread, results


@pytest.mark.parametrize("ticketed", [False, True])
def test_an_idle_stream_sleeps_past_its_presence_renewals(
    room_store: RoomStore, monkeypatch: pytest.MonkeyPatch, ticketed: bool
) -> None:
    """An anonymous stream once spun without sleeping as soon as its first
    presence renewal was due (about 15 s after it opened)."""
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_RENEW", 0.05)
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_CHECK", 0.25)
    roomid = room_store.create_room("quiet")
    room_store.register(roomid, "alice", "correct horse battery")
    token = room_store.login(roomid, "alice", "correct horse battery")
    waits = Waits(room_store, monkeypatch)
    stream = room_store.follow(roomid, username="alice" if ticketed else None, keepalive=60)
    assert isinstance(next(stream), Presence)
    thread, results = next_in_thread(stream)
    time.sleep(1.5)
    slept = waits.count
    room_store.post_message(roomid, "alice", token, "wake up")
    thread.join(10)
    assert isinstance(results[0], Message)
    stream.close()
    # About 1.5 / 0.25 = 6 sleeps (twice that for renewals); a spinning loop makes thousands.
    assert 2 <= slept <= 40, slept


def test_a_new_message_wakes_listeners_at_once(
    room_store: RoomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listeners are woken by the message itself, not by their periodic presence
    check (on `memory://` they once waited for it: 0.1 to 3 s late)."""
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_CHECK", 60.0)
    roomid = room_store.create_room("prompt")
    room_store.register(roomid, "alice", "correct horse battery")
    token = room_store.login(roomid, "alice", "correct horse battery")
    streams = [room_store.follow(roomid, keepalive=120) for _ in range(3)]
    waiting = []
    for stream in streams:
        assert isinstance(next(stream), Presence)
        waiting.append(next_in_thread(stream))
    time.sleep(0.3)  # let every listener go to sleep first
    room_store.post_message(roomid, "alice", token, "now")
    for thread, results in waiting:
        thread.join(5)
        assert [getattr(item, "text", item) for item in results] == ["now"]
    for stream in streams:
        stream.close()


def test_a_listener_whose_connection_closed_stops_at_its_next_check(
    room_store: RoomStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`closed` is asked at every wake-up, so a hung-up client is noticed within
    one presence check rather than at the next keep-alive."""
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_CHECK", 0.2)
    roomid = room_store.create_room("hung up")
    hung_up = threading.Event()
    stream = room_store.follow(roomid, keepalive=120, closed=hung_up.is_set)
    assert isinstance(next(stream), Presence)
    finished: list[Any] = []

    def drain() -> None:
        finished.extend(stream)  # ends when the listener stops

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    hung_up.set()
    thread.join(3)
    assert not thread.is_alive()
    assert finished == []
    assert roomid not in room_store.signals._listeners
