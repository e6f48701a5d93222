"""flaskchat is used three ways: `flask --app flaskchat run` in development,
`pip install` then gunicorn in production, and `from flaskchat import RoomStore`
in scripts. Each is run for real here, and a seed client drives the result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from support import Service, call, free_port, gunicorn_service

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
LINE = r"\d\d-\d\d-\d\d \d\d:\d\d:\d\d <{user}> {text}"


def seed_conversation(base: str) -> tuple[str, str]:
    """Create a room, register, log in, post; return the room id and the token."""
    status, body = call(base, "/createroom", {"alias": "Bob and Al's Example Chat Room"})
    assert status == 200, body
    roomid = body["roomid"]
    status, body = call(base, f"/{roomid}/register", {"username": "alice", "password": PASSWORD})
    assert (status, body["succeeded"], body["explanation"]) == (200, True, None)
    status, body = call(base, f"/{roomid}/login", {"username": "alice", "password": PASSWORD})
    assert status == 200 and body["succeeded"] is True
    token = body["token"]
    status, body = call(
        base, f"/{roomid}/message", {"username": "alice", "token": token, "message": "hello"}
    )
    assert (status, body["succeeded"]) == (200, True)
    status, lines = call(base, f"/{roomid}/get_conversation")
    assert status == 200
    assert re.fullmatch(LINE.format(user="alice", text="hello"), lines[-1]), lines
    return roomid, token


def test_flask_run_serves_the_seed_api(tmp_path: Path) -> None:
    port = free_port()
    server = Service(
        [sys.executable, "-m", "flask", "--app", "flaskchat", "run", "--port", str(port)],
        port,
        env={"FLASKCHAT_STORE_URL": f"sqlite:///{tmp_path / 'dev.sqlite3'}"},
        cwd=tmp_path,
        log=tmp_path / "flask.log",
    ).start()
    try:
        status, page = call(server.url, "/")
        assert status == 200 and "Create room" in page
        roomid, _ = seed_conversation(server.url)
        status, page = call(server.url, f"/{roomid}/")
        assert status == 200 and "Bob and Al&#39;s Example Chat Room" in page
    finally:
        server.stop()
    assert (tmp_path / "dev.sqlite3").is_file()
    # A checkout's instance folder is instance/ beside the package; the start-up
    # lines say so, and which store is open.
    logs = server.logs()
    assert f"Instance folder {REPO / 'instance'}; " in logs
    assert f"Store: the SQLite file {tmp_path / 'dev.sqlite3'}." in logs


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with flaskchat installed from the wheel that
    `make dist` builds (`python -m build`), as the README says."""
    work = tmp_path_factory.mktemp("install")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(work), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = work.glob("flaskchat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in (
        "flaskchat/py.typed",
        "flaskchat/templates/room.html",
        "flaskchat/static/room.js",
        "flaskchat/static/openapi.json",
    ):
        assert packaged in names, packaged
    assert any(name.endswith("/LICENSE") for name in names)
    [sdist] = work.glob("flaskchat-*.tar.gz")
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/LICENSE") for name in archive.getnames())
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=600
    )
    return venv


@pytest.mark.timeout(900)
def test_pip_install_then_gunicorn_with_two_workers_survives_a_restart(
    installed: Path, tmp_path: Path
) -> None:
    port = free_port()
    store = tmp_path / "chat.sqlite3"
    server = Service(
        [
            str(installed / "bin" / "gunicorn"),
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "flaskchat:create_app()",
        ],
        port,
        env={"FLASKCHAT_STORE_URL": f"sqlite:///{store}", "FLASKCHAT_RATELIMIT_ENABLED": "false"},
        cwd=tmp_path,
        log=tmp_path / "gunicorn.log",
    ).start()
    try:
        roomid, token = seed_conversation(server.url)
        for n in range(30):  # enough requests that both workers serve some
            status, _ = call(
                server.url,
                f"/{roomid}/message",
                {"username": "alice", "token": token, "message": f"n{n}"},
            )
            assert status == 200
        with urllib.request.urlopen(f"{server.url}/static/style.css", timeout=10) as css:
            assert css.headers["Content-Type"].startswith("text/css")
        server.stop()
        server.start()
        status, lines = call(server.url, f"/{roomid}/get_conversation")
        assert [line.rsplit(" ", 1)[1] for line in lines] == [
            "hello",
            *(f"n{n}" for n in range(30)),
        ]
        status, body = call(
            server.url,
            f"/{roomid}/message",
            {"username": "alice", "token": token, "message": "old token"},
        )
        assert status == 200, body  # the token survived the restart
        status, body = call(
            server.url, f"/{roomid}/login", {"username": "alice", "password": PASSWORD}
        )
        assert status == 200
    finally:
        server.stop()
    assert "Booting worker" in server.logs()


def test_a_script_writes_what_the_running_server_serves(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    server = gunicorn_service(store_url, tmp_path / "gunicorn.log").start()
    script = tmp_path / "announce.py"
    script.write_text(
        textwrap.dedent(f"""
        from flaskchat import RoomStore

        store = RoomStore.from_url({store_url!r})
        roomid = store.create_room("From a script")
        store.register(roomid, "bot", "a long password")
        token = store.login(roomid, "bot", "a long password")
        store.post_message(roomid, "bot", token, "hello from a script")
        print(roomid)
    """)
    )
    try:
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=60
        )
        roomid = result.stdout.strip()
        status, page = call(server.url, f"/{roomid}/")
        assert status == 200 and "From a script" in page
        status, lines = call(server.url, f"/{roomid}/get_conversation")
        assert re.fullmatch(LINE.format(user="bot", text="hello from a script"), lines[0])
    finally:
        server.stop()


@pytest.mark.timeout(900)
def test_an_installed_copy_reads_the_documented_instance_folder(
    installed: Path, tmp_path: Path
) -> None:
    """<prefix>/var/flaskchat-instance: its config.py is read, the SQLite file
    lands there, and the start-up lines in gunicorn's log say both."""
    instance = installed / "var" / "flaskchat-instance"
    instance.mkdir(parents=True, exist_ok=True)
    (instance / "config.py").write_text("CONVERSATION_LIMIT = 1\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKCHAT_")}
    server = Service(
        [
            str(installed / "bin" / "gunicorn"),
            "-c",
            "python:flaskchat.gunicorn_config",
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "flaskchat:create_app()",
        ],
        port,
        cwd=tmp_path,
        log=tmp_path / "gunicorn.log",
    )
    server.env = env
    try:
        server.start()
        roomid, token = seed_conversation(server.url)
        body = {"username": "alice", "token": token, "message": "again"}
        assert call(server.url, f"/{roomid}/message", body)[0] == 200
        status, lines = call(server.url, f"/{roomid}/get_conversation")
        assert status == 200 and len(lines) == 1  # CONVERSATION_LIMIT from config.py
    finally:
        server.stop()
        (instance / "config.py").unlink()
    logs = server.logs()
    assert f"Instance folder {instance}; settings from {instance / 'config.py'} and " in logs
    assert f"Store: the SQLite file {instance / 'flaskchat.sqlite3'}." in logs
    assert (instance / "flaskchat.sqlite3").is_file()
    assert not (installed / "var" / "flaskchat.app-instance").exists()


def test_an_installed_copy_without_the_redis_extra_says_to_install_it(
    installed: Path, tmp_path: Path
) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "FLASKCHAT_STORE_URL": f"sqlite:///{tmp_path / 'chat.sqlite3'}"}
    copy = subprocess.run(
        [
            str(installed / "bin" / "flask"),
            "--app",
            "flaskchat",
            "store",
            "copy",
            redis_url,
            f"sqlite:///{tmp_path / 'copy.sqlite3'}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copy.returncode == 2
    [line] = (copy.stdout + copy.stderr).strip().splitlines()
    assert line.startswith("Error: ") and "pip install 'flaskchat[redis]'" in line

    serve = subprocess.run(
        [
            str(installed / "bin" / "gunicorn"),
            "-c",
            "python:flaskchat.gunicorn_config",
            "-b",
            f"127.0.0.1:{free_port()}",
            "flaskchat:create_app()",
        ],
        env={**env, "FLASKCHAT_STORE_URL": redis_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode != 0
    output = serve.stdout + serve.stderr
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line and "[INFO]" not in line]
    assert line.startswith("Error: Setting STORE_URL (FLASKCHAT_STORE_URL) is ")
    assert "pip install 'flaskchat[redis]'" in line
