"""`flask room ...`: what an operator can do to a room from the server's shell,
on SQLite and Redis. Each failure is one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flaskchat import RoomStore, create_app, rules
from flaskchat.errors import AuthenticationFailed, RoomNotFound
from flaskchat.store import EXPORT_BATCH

from support import close_app, free_port

PASSWORD = "correct horse battery"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"PASSWORD_HASH_METHOD": "scrypt:1024:8:1"}


def run(app: Flask, *args: str, input: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=["room", *args], input=input)


def one_line_failure(result: Result) -> str:
    """The error a failed command printed: one line, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = result.output.strip().splitlines()
    return line


def dashed_room(store: RoomStore) -> str:
    """A room whose id begins with "-", as one in 64 do."""
    roomid = "-" + rules.new_roomid()[1:]
    assert store.backend.create_room(roomid, "dashed")
    return roomid


def test_list_prints_each_room_with_its_alias(app: Flask, store: RoomStore) -> None:
    first, second = store.create_room("First room"), store.create_room("Zweiter Raum, schön")
    result = run(app, "list")
    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == sorted(
        [f"{first}\tFirst room", f"{second}\tZweiter Raum, schön"]
    )


def test_list_of_an_empty_store_prints_nothing(app: Flask) -> None:
    result = run(app, "list")
    assert (result.exit_code, result.output) == (0, "")


def test_show_gives_counts_and_settings_but_no_secret(app: Flask, store: RoomStore) -> None:
    room = store.new_room("Shown room")
    for name in ("alice", "Bob"):
        store.register(room.roomid, name, PASSWORD)
    token = store.login(room.roomid, "alice", PASSWORD)
    store.post_message(room.roomid, "alice", token, "one")
    store.post_message(room.roomid, "alice", token, "two")
    store.ban(room.roomid, room.owner_key, "bob")
    store.update_settings(room.roomid, room.owner_key, registration="closed", retention_days=30)
    result = run(app, "show", room.roomid)
    assert result.exit_code == 0, result.output
    shown = dict(line.split(":", 1) for line in result.output.splitlines())
    assert {name: value.strip() for name, value in shown.items()} == {
        "room": room.roomid,
        "alias": "Shown room",
        "accounts": "2",
        "messages": "2",
        "owner": "yes",
        "registration": "closed",
        "retention": "30 days",
        "banned": "Bob",
    }
    for secret in (room.owner_key, token, rules.token_digest(room.owner_key), "scrypt"):
        assert secret not in result.output


def test_show_a_room_without_an_owner(app: Flask, store: RoomStore) -> None:
    roomid = rules.new_roomid()
    assert store.backend.create_room(roomid, "made before owners")
    result = run(app, "show", roomid)
    assert result.exit_code == 0, result.output
    assert "owner:        none" in result.output
    assert "retention:    for ever" in result.output
    assert "banned:       none" in result.output


def test_export_writes_the_whole_history_as_json_or_lines(app: Flask, store: RoomStore) -> None:
    room = store.new_room("Exported")
    store.register(room.roomid, "alice", PASSWORD)
    token = store.login(room.roomid, "alice", PASSWORD)
    # More than one batch, and a deleted message that must not come back.
    texts = [f"message {n}" for n in range(EXPORT_BATCH + 20)]
    ids = [store.post_message(room.roomid, "alice", token, text).id for text in texts]
    store.delete_message(room.roomid, ids[3], owner_key=room.owner_key)
    del texts[3]
    expected = list(store.export(room.roomid, room.owner_key))

    as_json = run(app, "export", room.roomid)
    assert as_json.exit_code == 0, as_json.output
    exported = json.loads(as_json.output)
    assert (exported["roomid"], exported["alias"]) == (room.roomid, "Exported")
    assert [m["text"] for m in exported["messages"]] == texts
    assert [m["id"] for m in exported["messages"]] == [m.id for m in expected]
    assert set(exported["messages"][0]) == {"id", "time", "username", "text", "line"}

    as_text = run(app, "export", room.roomid, "--format", "text")
    assert as_text.exit_code == 0, as_text.output
    assert as_text.output.splitlines() == [m.line for m in expected]
    assert as_text.output.splitlines()[-50:] == store.conversation(room.roomid)


def test_export_refuses_an_unknown_format(app: Flask, store: RoomStore) -> None:
    roomid = store.create_room("Exported")
    line = one_line_failure(run(app, "export", roomid, "--format", "xml"))
    assert '"json" or "text"' in line


def test_delete_asks_first_unless_told_yes(app: Flask, store: RoomStore) -> None:
    kept, gone = store.create_room("Kept"), store.create_room("Gone")
    declined = run(app, "delete", kept, input="n\n")
    assert declined.exit_code == 1
    assert "Kept" in declined.output  # the question names the room
    assert store.alias(kept) == "Kept"

    confirmed = run(app, "delete", kept, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    told = run(app, "delete", "--yes", gone)
    assert told.exit_code == 0, told.output
    for roomid in (kept, gone):
        with pytest.raises(RoomNotFound):
            store.alias(roomid)
        assert roomid not in run(app, "list").output


def test_owner_key_issues_a_new_key_and_voids_the_old(app: Flask, store: RoomStore) -> None:
    room = store.new_room("Lost key")
    result = run(app, "owner-key", room.roomid)
    assert result.exit_code == 0, result.output
    [link] = [word for word in result.output.split() if word.startswith(f"/{room.roomid}/")]
    prefix = f"/{room.roomid}/#owner="
    assert link.startswith(prefix)
    new_key = link.removeprefix(prefix)
    assert new_key in result.output.splitlines()[1:]  # also on a line of its own
    assert store.settings(room.roomid, new_key).banned == []
    with pytest.raises(AuthenticationFailed):
        store.settings(room.roomid, room.owner_key)


def test_owner_key_gives_an_old_room_its_first_owner(app: Flask, store: RoomStore) -> None:
    roomid = rules.new_roomid()
    assert store.backend.create_room(roomid, "made before owners")
    result = run(app, "owner-key", roomid)
    assert result.exit_code == 0, result.output
    assert store.summary(roomid).has_owner


def test_room_ids_may_begin_with_a_dash(app: Flask, store: RoomStore) -> None:
    roomid = dashed_room(store)
    assert f"room:         {roomid}" in run(app, "show", roomid).output
    assert json.loads(run(app, "export", roomid, "--format", "json").output)["roomid"] == roomid
    assert run(app, "owner-key", roomid).exit_code == 0
    assert run(app, "delete", roomid, "--yes").exit_code == 0
    with pytest.raises(RoomNotFound):
        store.alias(roomid)


@pytest.mark.parametrize(
    "command",
    [["show"], ["export"], ["export", "--format", "text"], ["delete", "--yes"], ["owner-key"]],
)
@pytest.mark.parametrize("roomid", ["A" * 22, "-" + "A" * 21, "not a room"])
def test_an_unknown_room_is_one_line(app: Flask, command: list[str], roomid: str) -> None:
    line = one_line_failure(run(app, *command, roomid))
    assert line == f"Error: There is no room {roomid!r}."


@pytest.mark.parametrize(
    "command", [["list"], ["show", "A" * 22], ["export", "A" * 22], ["owner-key", "A" * 22]]
)
def test_a_store_that_is_down_is_one_line(command: list[str]) -> None:
    down = create_app({"TESTING": True, "STORE_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        line = one_line_failure(run(down, *command))
    finally:
        close_app(down)
    assert line.startswith("Error: Cannot use redis://127.0.0.1:")
    assert "refused" in line.lower()


def test_flask_room_list_in_a_real_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    store = RoomStore.from_url(url)
    try:
        roomid = store.create_room("From the shell")
    finally:
        store.close()
    env = {**os.environ, "FLASKCHAT_STORE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "flaskchat", "room", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{roomid}\tFrom the shell\n"
