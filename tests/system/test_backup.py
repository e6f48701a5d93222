"""`flask store backup` while servers keep writing, and `flask store check`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask

from flaskchat import RoomStore, create_app
from flaskchat.backends import open_backend

from support import call, close_app, gunicorn_service

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"
CHEAP_HASH = "pbkdf2:sha256:1"


def flask_store(store_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "flaskchat", "store", *args],
        env={**os.environ, "FLASKCHAT_STORE_URL": store_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def saved_messages(url: str) -> set[tuple[str, str]]:
    backend = open_backend(url)
    try:
        return {(r, m.text) for r in backend.room_ids() for m in backend.dump_room(r).messages}
    finally:
        backend.close()


@pytest.mark.timeout(180)
def test_a_backup_under_write_load_holds_every_message_acknowledged_before_it(
    store_url: str, tmp_path: Path
) -> None:
    server = gunicorn_service(
        store_url,
        tmp_path / "gunicorn.log",
        env={"FLASKCHAT_PASSWORD_HASH_METHOD": CHEAP_HASH},
    ).start()
    acked: list[tuple[float, str, str]] = []  # when the reply came, room, text
    stop = threading.Event()

    def write(roomid: str, name: str, token: str) -> None:
        n = 0
        while not stop.is_set():
            text = f"{name} {n}"
            body = {"username": name, "token": token, "message": text}
            if call(server.url, f"/{roomid}/message", body)[0] == 200:
                acked.append((time.monotonic(), roomid, text))
            n += 1

    writers = []
    backup = tmp_path / "backup.sqlite3"
    try:
        for n in range(2):
            roomid = call(server.url, "/createroom", {"alias": f"room {n}"})[1]["roomid"]
            for name in ("alice", "bob"):
                account = {"username": name, "password": PASSWORD}
                assert call(server.url, f"/{roomid}/register", account)[0] == 200
                token = call(server.url, f"/{roomid}/login", account)[1]["token"]
                writers.append(threading.Thread(target=write, args=(roomid, name, token)))
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        began = time.monotonic()
        result = flask_store(store_url, tmp_path, "backup", str(backup))
        ended = time.monotonic()
        time.sleep(0.2)
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
        server.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Backed up ") and "4 accounts" in result.stdout

    before = {(roomid, text) for at, roomid, text in acked if at < began}
    assert len(before) >= 40
    saved = saved_messages(f"sqlite:///{backup}")
    assert before <= saved, sorted(before - saved)[:5]
    # The servers kept writing meanwhile, and what they wrote after it is not in it.
    after = {(roomid, text) for at, roomid, text in acked if at > ended}
    assert after and not after & saved

    checked = flask_store(store_url, tmp_path, "check", f"sqlite:///{backup}")
    assert checked.returncode == 0, checked.stderr
    assert f"2 rooms, 4 accounts and {len(saved)} messages" in checked.stdout


@pytest.fixture
def cli_app(store_url: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "STORE_URL": store_url, "PASSWORD_HASH_METHOD": CHEAP_HASH})
    yield app
    close_app(app)


def store_command(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["store", *args])
    return result.exit_code, result.output


def populate(store: RoomStore, rooms: int = 2, messages: int = 3) -> list[str]:
    roomids = []
    for n in range(rooms):
        roomid = store.create_room(f"room {n}")
        for name in ("alice", "bob"):
            store.register(roomid, name, PASSWORD)
        token = store.login(roomid, "alice", PASSWORD)
        for m in range(messages):
            store.post_message(roomid, "alice", token, f"message {m} " + "x" * 500)
        roomids.append(roomid)
    return roomids


def test_a_backup_refuses_an_existing_file_unless_replacing(cli_app: Flask, tmp_path: Path) -> None:
    populate(cli_app.extensions["flaskchat"])
    backup = tmp_path / "backup.sqlite3"
    assert store_command(cli_app, "backup", str(backup)) == (
        0,
        f"Backed up {cli_app.config['STORE_URL']} to {backup}:"
        " 2 rooms, 4 accounts and 6 messages.\n",
    )
    code, output = store_command(cli_app, "backup", str(backup))
    assert (code, output) == (
        1,
        f"Error: {backup} exists already: pass --replace to overwrite it.\n",
    )
    assert store_command(cli_app, "backup", str(backup), "--replace")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if "backup" in p.name) == ["backup.sqlite3"]

    code, output = store_command(cli_app, "backup", str(tmp_path / "no" / "such" / "b.sqlite3"))
    assert code == 1 and "There is no such folder" in output and output.count("\n") == 1


def test_a_sqlite_store_is_not_backed_up_over_itself(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    app = create_app({"TESTING": True, "STORE_URL": f"sqlite:///{path}"})
    try:
        code, output = store_command(app, "backup", str(path), "--replace")
    finally:
        close_app(app)
    assert code == 1 and "is the store itself" in output and output.count("\n") == 1


def test_a_memory_store_has_nothing_to_back_up(tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "STORE_URL": "memory://"})
    code, output = store_command(app, "backup", str(tmp_path / "b.sqlite3"))
    assert code == 1 and "memory://" in output and output.count("\n") == 1


def test_check_counts_a_healthy_store(cli_app: Flask) -> None:
    populate(cli_app.extensions["flaskchat"], rooms=3, messages=2)
    code, output = store_command(cli_app, "check")
    assert code == 0, output
    assert output.endswith(" is fine: 3 rooms, 6 accounts and 6 messages.\n")


def test_check_finds_a_damaged_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store = RoomStore.from_url(f"sqlite:///{path}", hash_method=CHEAP_HASH)
    populate(store, rooms=3, messages=40)
    store.close()
    size = path.stat().st_size
    with open(path, "r+b") as file:  # scribble over a page in the middle
        file.seek(size // 2 // 4096 * 4096)
        file.write(b"\xa5" * 4096)
    app = create_app({"TESTING": True, "STORE_URL": "memory://"})
    code, output = store_command(app, "check", f"sqlite:///{path}")
    assert code == 1, output
    # Found by the check, or already when opening it: one line either way.
    assert output.startswith("Error: ") and str(path) in output and output.count("\n") == 1
    assert "malformed" in output


def test_check_finds_a_redis_room_without_its_alias(redis_url: str, tmp_path: Path) -> None:
    store = RoomStore.from_url(redis_url, hash_method=CHEAP_HASH)
    populate(store)
    store.close()
    with redis.Redis.from_url(redis_url) as client:
        client.sadd("flaskchat:rooms", "A" * 22)
    app = create_app({"TESTING": True, "STORE_URL": redis_url})
    try:
        code, output = store_command(app, "check")
        # A copy (or a backup) takes the rooms that are whole.
        copied = store_command(app, "copy", redis_url, f"sqlite:///{tmp_path / 'c.sqlite3'}")
    finally:
        close_app(app)
    assert (code, output) == (
        1,
        f"Error: {redis_url}: room {'A' * 22} is listed but has no alias.\n",
    )
    assert copied == (0, "Copied 2 rooms, 4 accounts and 6 messages.\n")
