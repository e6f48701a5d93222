"""Errors of the tools and of start-up are one line: `flask store ...` with a
store it cannot reach, a bad URL or a missing file, and a bad setting under
`flask run` and gunicorn. A copy that fails leaves no half-made file behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from flask import Flask

from flaskchat import RoomStore, create_app

from support import free_port, gunicorn_path

PASSWORD = "correct horse battery"
# A line that gunicorn itself logs: "[date] [pid] [LEVEL] ...".
GUNICORN_RECORD = re.compile(r"\[[^]]+\] \[\d+\] \[[A-Z]+\] ")


@pytest.fixture
def cli_app() -> Flask:
    return create_app({"TESTING": True, "STORE_URL": "memory://"})


def store_command(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["store", *args])
    return result.exit_code, result.output


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def unreachable_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def populate(url: str, rooms: int = 2) -> list[str]:
    store = RoomStore.from_url(url, hash_method="pbkdf2:sha256:1")
    roomids = []
    for n in range(rooms):
        roomid = store.create_room(f"room {n}")
        store.register(roomid, "alice", PASSWORD)
        token = store.login(roomid, "alice", PASSWORD)
        store.post_message(roomid, "alice", token, f"hello {n}")
        roomids.append(roomid)
    store.close()
    return sorted(roomids)


def test_a_copy_from_an_unreachable_store_is_one_line_and_makes_no_file(
    cli_app: Flask, tmp_path: Path
) -> None:
    source = unreachable_redis()
    code, output = store_command(cli_app, "copy", source, f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert code == 1
    line = one_line(output)
    assert line.startswith(f"Error: Cannot read {source}: ") and "refused" in line
    assert list(tmp_path.iterdir()) == []


def test_a_copy_to_an_unreachable_store_is_one_line(cli_app: Flask, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    populate(source)
    destination = unreachable_redis()
    code, output = store_command(cli_app, "copy", source, destination)
    assert code == 1
    assert one_line(output).startswith(f"Error: The copy to {destination} failed: ")


def test_a_copy_that_fails_midway_leaves_no_new_file(
    cli_app: Flask, tmp_path: Path, redis_url: str
) -> None:
    """The second room of the source is damaged: the first was already copied
    when the copy stopped, yet no destination file appears."""
    _, second = populate(redis_url)
    with redis.Redis.from_url(redis_url) as client:
        client.hset(f"flaskchat:{{{second}}}:users", "alice", "not an account")
    destination = tmp_path / "new.sqlite3"
    code, output = store_command(cli_app, "copy", redis_url, f"sqlite:///{destination}")
    assert code == 1
    assert one_line(output).startswith(f"Error: The copy to sqlite:///{destination} failed")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_source_file_is_not_created(cli_app: Flask, tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    code, output = store_command(
        cli_app, "copy", f"sqlite:///{missing}", f"sqlite:///{tmp_path / 'new.sqlite3'}"
    )
    assert code == 1
    assert one_line(output) == f"Error: There is no SQLite file at {missing}."
    assert list(tmp_path.iterdir()) == []


def test_a_url_of_no_known_kind_is_one_line(cli_app: Flask) -> None:
    code, output = store_command(cli_app, "copy", "postgres://db/chat", "memory://")
    assert code == 2
    assert "Unsupported store URL" in one_line(output)


def test_a_copy_to_a_new_file_writes_it_whole(cli_app: Flask, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    populate(source, rooms=3)
    destination = tmp_path / "sub" / "new.sqlite3"
    destination.parent.mkdir()
    code, output = store_command(cli_app, "copy", source, f"sqlite:///{destination}")
    assert (code, output) == (0, "Copied 3 rooms, 3 accounts and 3 messages.\n")
    assert [p.name for p in destination.parent.iterdir()] == ["new.sqlite3"]
    copy = RoomStore.from_url(f"sqlite:///{destination}")
    assert len(copy.snapshot()) == 3
    copy.close()


def run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=tmp_path,
        env={**os.environ, "FLASKCHAT_STORE_URL": f"sqlite:///{tmp_path / 'chat.sqlite3'}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def flask_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "flaskchat", *args]


def test_flask_store_copy_from_an_unreachable_store_prints_one_line(tmp_path: Path) -> None:
    source = unreachable_redis()
    result = run(
        flask_command("store", "copy", source, f"sqlite:///{tmp_path / 'new.sqlite3'}"), tmp_path
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert one_line(result.stderr).startswith(f"Error: Cannot read {source}: ")
    assert not (tmp_path / "new.sqlite3").exists()


BAD_TIMEZONE = (
    "Setting TIMEZONE (FLASKCHAT_TIMEZONE) is 'Mars/Base', but it takes an IANA time zone"
    " name such as UTC or Europe/Paris."
)


def test_flask_run_with_a_bad_setting_stops_with_one_line(tmp_path: Path) -> None:
    result = run(
        flask_command("run", "--port", str(free_port())), tmp_path, FLASKCHAT_TIMEZONE="Mars/Base"
    )
    assert result.returncode != 0
    assert one_line(result.stdout + result.stderr) == f"Error: {BAD_TIMEZONE}"


@pytest.mark.parametrize(
    "options",
    [
        ["-c", "python:flaskchat.gunicorn_config", "-w", "2"],  # checked in the master
        ["--preload", "-w", "2"],  # loaded in the master
        ["-w", "1"],  # loaded in the worker, which gunicorn then stops
    ],
    ids=["shipped-config", "preload", "plain"],
)
def test_gunicorn_with_a_bad_setting_stops_with_one_line(
    tmp_path: Path, options: list[str]
) -> None:
    argv = [gunicorn_path(), *options, "-b", f"127.0.0.1:{free_port()}", "flaskchat:create_app()"]
    if "-c" not in options:
        argv.insert(1, "--no-control-socket")
    result = run(argv, tmp_path, FLASKCHAT_TIMEZONE="Mars/Base")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if line and not GUNICORN_RECORD.match(line)]
    assert "Traceback" not in output
    assert [line.removeprefix("Error: ") for line in ours] == [BAD_TIMEZONE], output
