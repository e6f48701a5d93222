"""`flask store copy`: SQLite to Redis and back, with nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from flaskchat import RoomStore, create_app

PASSWORD = "correct horse battery"


def populate(store: RoomStore) -> dict[str, str]:
    """Two rooms with accounts, logged-in tokens and messages; returns tokens by name."""
    tokens = {}
    for alias in ("Bob and Al's room", "房间 ✓"):
        roomid = store.create_room(alias)
        for name in ("alice", "Bob"):
            store.register(roomid, name, PASSWORD)
            tokens[f"{roomid}/{name}"] = store.login(roomid, name, PASSWORD)
        for n in range(30):
            name = ("alice", "Bob")[n % 2]
            text = f"message {n} <b>é</b>\n\tline"
            store.post_message(roomid, name, tokens[f"{roomid}/{name}"], text)
    return tokens


@pytest.fixture
def cli_app(tmp_path: Path) -> Flask:
    return create_app({"TESTING": True, "STORE_URL": "memory://"})


def copy(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["store", "copy", *args])
    return result.exit_code, result.output


def test_sqlite_to_redis_and_back(cli_app: Flask, tmp_path: Path, redis_url: str) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    back_url = f"sqlite:///{tmp_path / 'back.sqlite3'}"
    source = RoomStore.from_url(source_url)
    tokens = populate(source)
    before = source.snapshot()
    source.close()

    code, output = copy(cli_app, source_url, redis_url)
    assert code == 0, output
    assert "Copied 2 rooms, 4 accounts and 60 messages." in output

    redis_store = RoomStore.from_url(redis_url)
    assert redis_store.snapshot() == before
    for key, token in tokens.items():
        roomid, name = key.split("/")
        # Tokens and password hashes came along: nobody has to log in again.
        redis_store.post_message(roomid, name, token, "after the move")
        assert redis_store.login(roomid, name, PASSWORD)
    after_move = redis_store.snapshot()
    redis_store.close()

    code, output = copy(cli_app, redis_url, back_url)
    assert code == 0, output
    back = RoomStore.from_url(back_url)
    assert back.snapshot() == after_move
    roomid = next(iter(after_move))
    history = back.messages(roomid, limit=200).messages
    assert [m.text for m in history][-1] == "after the move"
    assert [m.posted_at for m in history] == sorted(m.posted_at for m in history)
    back.close()


def test_a_non_empty_destination_is_refused_unless_replacing(
    cli_app: Flask, tmp_path: Path
) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    target_url = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    source = RoomStore.from_url(source_url)
    populate(source)
    expected = source.snapshot()
    source.close()
    target = RoomStore.from_url(target_url)
    keep = target.create_room("already here")
    target.close()

    code, output = copy(cli_app, source_url, target_url)
    assert code != 0 and "refusing to overwrite" in output
    target = RoomStore.from_url(target_url)
    assert set(target.snapshot()) == {keep}
    target.close()

    assert copy(cli_app, source_url, target_url, "--replace")[0] == 0
    assert copy(cli_app, source_url, target_url, "--replace")[0] == 0  # twice: replaced
    target = RoomStore.from_url(target_url)
    snapshot = target.snapshot()
    target.close()
    assert set(snapshot) == set(expected) | {keep}
    assert {k: v for k, v in snapshot.items() if k != keep} == expected


def test_bad_urls_are_a_usage_error(cli_app: Flask) -> None:
    code, output = copy(cli_app, "postgres://x", "memory://")
    assert code == 2 and "Unsupported store URL" in output
