"""Message ids count within a room: they say nothing of other rooms' traffic,
never go back or come round again (not after a delete, a trim or a room's
removal), and the ids a client held before the per-room count keep working."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flaskchat import RoomStore, create_app
from flaskchat.backends.base import DELETE, GONE, TRIM
from flaskchat.backends.sqlite import MIGRATIONS

from support import EventStream, ServedApp, backend_url, close_app

PASSWORD = "correct horse battery"
CHEAP_HASH = "pbkdf2:sha256:1"
# The schema before message ids were counted per room.
GLOBAL_IDS_VERSION = 6


def order(message_id: str) -> tuple[int, ...]:
    """Memory and SQLite ids are numbers, Redis ids `ms-seq`: compare them as such."""
    return tuple(int(part) for part in message_id.split("-"))


@pytest.fixture(params=["memory", "sqlite"])
def numbered(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoomStore]:
    """A store whose ids are plain sequence numbers."""
    store = RoomStore.from_url(
        backend_url(request.param, request, tmp_path), hash_method=CHEAP_HASH
    )
    yield store
    store.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoomStore]:
    store = RoomStore.from_url(
        backend_url(request.param, request, tmp_path), hash_method=CHEAP_HASH
    )
    yield store
    store.close()


def member(store: RoomStore, roomid: str, name: str = "alice") -> str:
    store.register(roomid, name, PASSWORD)
    return store.login(roomid, name, PASSWORD)


def test_a_new_rooms_first_message_is_number_one(numbered: RoomStore) -> None:
    busy = numbered.new_room("busy")
    token = member(numbered, busy.roomid)
    busy_ids = [numbered.post_message(busy.roomid, "alice", token, f"m{n}").id for n in range(6)]
    numbered.delete_message(busy.roomid, busy_ids[2], owner_key=busy.owner_key)
    member(numbered, busy.roomid, "carol")
    numbered.ban(busy.roomid, busy.owner_key, "carol")
    numbered.unban(busy.roomid, busy.owner_key, "carol")

    quiet = numbered.create_room("quiet")
    other = member(numbered, quiet, "bob")
    first = numbered.post_message(quiet, "bob", other, "hello")
    busy_ids.append(numbered.post_message(busy.roomid, "alice", token, "meanwhile").id)
    second = numbered.post_message(quiet, "bob", other, "again")

    assert (first.id, second.id) == ("1", "2")
    assert [int(i) for i in busy_ids] == sorted(int(i) for i in busy_ids)
    assert len(set(busy_ids)) == len(busy_ids)


def test_ids_never_go_back_after_a_delete_a_trim_or_a_removal(any_store: RoomStore) -> None:
    """A delete, a trim or a "gone" event is numbered after everything before it,
    even when it removed the newest message: a client holding that id as its
    cursor must still get the event."""
    store = any_store
    room = store.new_room("moderated")
    token = member(store, room.roomid)
    one = store.post_message(room.roomid, "alice", token, "one").id
    newest = store.post_message(room.roomid, "alice", token, "two").id
    store.delete_message(room.roomid, newest, owner_key=room.owner_key)
    [deleted] = store.backend.events_after(room.roomid, newest, 10)
    assert (deleted.kind, deleted.target) == (DELETE, newest)
    assert order(deleted.id) > order(newest)
    three = store.post_message(room.roomid, "alice", token, "three").id
    assert order(three) > order(deleted.id)

    time.sleep(0.002)  # the trim removes entries strictly older than its cutoff
    assert store.backend.purge_before(room.roomid, datetime.now(UTC) + timedelta(days=1)) == 2
    [trim] = store.backend.events_after(room.roomid, three, 10)
    assert trim.kind == TRIM and order(trim.id) > order(three)
    four = store.post_message(room.roomid, "alice", token, "four").id
    assert order(four) > order(trim.id) and order(four) > order(one)

    store.remove_room(room.roomid)
    [gone] = store.backend.events_after(room.roomid, four, 10)
    assert gone.kind == GONE and order(gone.id) > order(four)


def test_an_upgraded_file_keeps_every_id_and_resume_cursor(tmp_path: Path) -> None:
    """A file written while ids counted across the server: every id a client
    holds still names the same message, and cursors resume exactly after it."""
    path = tmp_path / "old.sqlite3"
    red, blue = "R" * 22, "B" * 22
    old: dict[str, list[str]] = {red: [], blue: []}
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:GLOBAL_IDS_VERSION]:
            conn.executescript(step)
        conn.execute(f"PRAGMA user_version = {GLOBAL_IDS_VERSION}")
        for roomid in (red, blue):
            conn.execute("INSERT INTO rooms (id, alias) VALUES (?, ?)", (roomid, roomid[:1]))
        stamp = int(time.time() * 1e6) - 1000
        for n, roomid in enumerate([red, blue, blue, red, blue, red, red, blue]):
            cursor = conn.execute(
                "INSERT INTO messages (room_id, name_key, username, body, posted_at_us)"
                " VALUES (?, 'al', 'al', ?, ?)",
                (roomid, f"old {n}", stamp + n),
            )
            old[roomid].append(str(cursor.lastrowid))
    conn.close()
    assert old == {red: ["1", "4", "6", "7"], blue: ["2", "3", "5", "8"]}

    app = create_app({"TESTING": True, "STORE_URL": f"sqlite:///{path}", "SSE_KEEPALIVE": 0.5})
    try:
        store: RoomStore = app.extensions["flaskchat"]
        store.hash_method = CHEAP_HASH
        token = member(store, red)
        new = store.post_message(red, "alice", token, "after the upgrade").id
        assert int(new) > int(old[red][-1])
        client = app.test_client()

        page = client.get(f"/{red}/messages").json
        assert [m["id"] for m in page["messages"]] == [*old[red], new]
        resumed = client.get(f"/{red}/messages?after={old[red][1]}").json
        assert [m["id"] for m in resumed["messages"]] == [*old[red][2:], new]
        before = client.get(f"/{blue}/messages?before={old[blue][2]}").json
        assert [m["text"] for m in before["messages"]] == ["old 1", "old 2"]

        with (
            ServedApp(app) as served,
            EventStream(served.url, f"/{red}/events?after={old[red][1]}") as stream,
        ):
            events = stream.messages(3)
        assert [(e.id, e.data["text"]) for e in events] == [
            ("6", "old 5"),
            ("7", "old 6"),
            (new, "after the upgrade"),
        ]
        with (
            ServedApp(app) as served,
            EventStream(served.url, f"/{blue}/events", last_event_id=old[blue][0]) as stream,
        ):
            assert [e.id for e in stream.messages(3)] == old[blue][1:]
    finally:
        close_app(app)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_room_made_after_the_upgrade_counts_from_one(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:GLOBAL_IDS_VERSION]:
            conn.executescript(step)
        conn.execute(f"PRAGMA user_version = {GLOBAL_IDS_VERSION}")
        conn.execute("INSERT INTO rooms (id, alias) VALUES (?, 'old')", ("O" * 22,))
        conn.executemany(
            "INSERT INTO messages (room_id, name_key, username, body, posted_at_us)"
            " VALUES (?, 'al', 'al', 'old', 0)",
            [("O" * 22,)] * 5,
        )
    conn.close()
    store = RoomStore.from_url(f"sqlite:///{path}", hash_method=CHEAP_HASH)
    try:
        roomid = store.create_room("new")
        token = member(store, roomid)
        assert store.post_message(roomid, "alice", token, "first").id == "1"
    finally:
        store.close()


def test_two_stores_posting_to_one_room_get_distinct_increasing_ids(tmp_path: Path) -> None:
    """Two processes' worth of writers on one file, each with group commit."""
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    stores = [RoomStore.from_url(url, hash_method=CHEAP_HASH) for _ in range(2)]
    try:
        roomid = stores[0].create_room("crowded")
        token = member(stores[0], roomid)
        per_thread = 25
        posted: list[list[str]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def post(n: int) -> None:
            store = stores[n % 2]
            try:
                for i in range(per_thread):
                    posted[n].append(store.post_message(roomid, "alice", token, f"{n}/{i}").id)
            except BaseException as error:  # reported below, in the test's thread
                errors.append(error)

        def elsewhere() -> None:  # another room is busy meanwhile
            other = stores[1].create_room("elsewhere")
            for _ in range(per_thread):
                stores[1].backend.append_message(other, "al", "al", "x", datetime.now(UTC), None)

        threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
        threads.append(threading.Thread(target=elsewhere))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        every = [message_id for ids in posted for message_id in ids]
        assert sorted(map(int, every)) == list(range(1, 4 * per_thread + 1))
        for ids in posted:  # each writer sees its own ids increase
            assert list(map(int, ids)) == sorted(map(int, ids))
        page = stores[1].messages(roomid, limit=200)
        assert [m.id for m in page.messages] == [str(n) for n in range(1, 4 * per_thread + 1)]
        texts = {m.id: m.text for m in page.messages}
        for n, ids in enumerate(posted):
            assert [texts[i] for i in ids] == [f"{n}/{i}" for i in range(per_thread)]
    finally:
        for store in stores:
            store.close()


def test_a_copied_room_is_numbered_from_one(numbered: RoomStore, tmp_path: Path) -> None:
    """`store copy` writes the messages anew under the target's own ids."""
    source = RoomStore.from_url(f"sqlite:///{tmp_path / 'source.sqlite3'}")
    try:
        noise = source.create_room("noise")
        roomid = source.create_room("copied")
        for room in (noise, roomid, noise):
            source.backend.append_message(room, "al", "al", "x", datetime.now(UTC), None)
        source.backend.append_message(roomid, "al", "al", "y", datetime.now(UTC), None)
        busy = numbered.create_room("already here")
        numbered.backend.append_message(busy, "bo", "bo", "z", datetime.now(UTC), None)
        numbered.backend.restore_room(source.backend.dump_room(roomid))
    finally:
        source.close()
    later = numbered.backend.append_event(roomid, "ban", "al")
    assert [m.id for m in numbered.backend.events_after(roomid, None, 10)] == ["1", "2", later.id]
    assert later.id == "3"
