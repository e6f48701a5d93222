"""A SQLite store that cannot write, with real gunicorn: a file that is read-only
when the workers open it, and a disk that fills up. Writes and `/healthz` answer
503 meanwhile, reads go on, and once the store can write again the next requests
succeed without a restart, with nothing acknowledged lost."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from flaskchat import RoomStore

from support import IN_CI, Service, call, gunicorn_service, require_executable

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"
CHEAP_HASH = "pbkdf2:sha256:1"


def seed_room(path: Path) -> tuple[str, str]:
    """A room with alice in it and one message; returns the room id and her token."""
    store = RoomStore.from_url(f"sqlite:///{path}", hash_method=CHEAP_HASH)
    roomid = store.create_room("trouble")
    store.register(roomid, "alice", PASSWORD)
    token = store.login(roomid, "alice", PASSWORD)
    store.post_message(roomid, "alice", token, "before")
    store.close()
    return roomid, token


def server(path: Path, log: Path, **env: str) -> Service:
    env = {"FLASKCHAT_PASSWORD_HASH_METHOD": CHEAP_HASH, **env}
    return gunicorn_service(f"sqlite:///{path}", log, env=env)


def post(service: Service, roomid: str, token: str, text: str) -> int:
    body = {"username": "alice", "token": token, "message": text}
    status, reply = call(service.url, f"/{roomid}/message", body)
    assert isinstance(reply, dict) and reply["succeeded"] is (status == 200), reply
    return status


def health(service: Service) -> int:
    status, reply = call(service.url, "/healthz")
    assert reply["status"] == ("ok" if status == 200 else "unavailable")
    return status


def conversation(service: Service, roomid: str) -> list[str]:
    status, lines = call(service.url, f"/{roomid}/get_conversation")
    assert status == 200
    return [line.split("> ", 1)[1] for line in lines]


def assert_intact(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder that an unprivileged server can reach (pytest's own are private)."""
    folder = Path(tempfile.mkdtemp(prefix="flaskchat-readonly-"))
    yield folder
    shutil.rmtree(folder)


def test_a_file_read_only_at_start_serves_reads_then_writes_once_it_is_writable(
    open_folder: Path,
) -> None:
    path = open_folder / "chat.sqlite3"
    roomid, token = seed_room(path)
    # The instance folder belongs to whoever ran the app first: the server
    # does not need it when it has a secret key and nothing else to keep there.
    service = server(path, open_folder / "gunicorn.log", FLASKCHAT_SECRET_KEY="test only")
    if os.geteuid() == 0:  # root writes whatever the permissions say
        setpriv = require_executable("setpriv")
        service.argv[:0] = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        Path(Flask("flaskchat.app").instance_path).mkdir(exist_ok=True)
        for item in [open_folder, *open_folder.iterdir()]:
            shutil.chown(item, "nobody", "nogroup")
    path.chmod(0o444)
    service.start()
    try:
        for n in range(4):  # whichever worker answers
            assert post(service, roomid, token, f"refused {n}") == 503
            assert health(service) == 503
        assert conversation(service, roomid) == ["before"]
        # Access returns to the database's files: the -wal and -shm files that
        # SQLite made meanwhile took the main file's mode.
        for item in open_folder.glob("chat.sqlite3*"):
            item.chmod(0o644)
        for n in range(4):
            assert post(service, roomid, token, f"after {n}") == 200
            assert health(service) == 200
        assert conversation(service, roomid) == ["before"] + [f"after {n}" for n in range(4)]
    finally:
        service.stop()
    assert_intact(path)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs), unmounted at the end."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = require_executable("mount")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m,mode=0755", "flaskchat-test", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(f"{message}, and CI must run every test")
        pytest.skip(message)
    yield folder
    subprocess.run([require_executable("umount"), "-l", str(folder)], check=True)


def fill(disk: Path) -> Path:
    """Take every free block of the file system; return the file that holds them."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as output:
        while True:
            try:
                output.write(b"\0" * 65536)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return filler


def test_a_full_disk_fails_writes_and_health_until_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    path = small_disk / "chat.sqlite3"
    roomid, token = seed_room(path)
    service = server(path, tmp_path / "gunicorn.log").start()
    try:
        assert post(service, roomid, token, "while there is room") == 200
        assert health(service) == 200
        filler = fill(small_disk)
        for n in range(4):
            assert post(service, roomid, token, f"refused {n}") == 503
            assert health(service) == 503
        assert conversation(service, roomid) == ["before", "while there is room"]
        filler.unlink()
        for n in range(4):
            assert post(service, roomid, token, f"after {n}") == 200
            assert health(service) == 200
        assert conversation(service, roomid) == ["before", "while there is room"] + [
            f"after {n}" for n in range(4)
        ]
    finally:
        service.stop()
    assert_intact(path)
