"""Failed logins leave one stable, unforgeable line that docs/security.md's fail2ban
filter matches, and never the password nor the room id; no path a client sends can
forge a line of the app's log either."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask, request
from flask.logging import default_handler
from werkzeug.exceptions import InternalServerError

from flaskchat.logs import KEY_FILE, escape, log_key, room_log_id

from actions import PASSWORD, ChatActions
from support import require_executable

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
SECRET = "hunter2-not-the-password"


def readme_filter() -> str:
    text = SECURITY_DOC.read_text()
    block = text.split("<!-- fail2ban-filter -->", 1)[1]
    return block.split("```ini\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def one(app: Flask) -> ChatActions:
    return ChatActions(app.test_client())  # type: ignore[arg-type]


def failed_logins(one: ChatActions, caplog: pytest.LogCaptureFixture) -> tuple[str, list[str]]:
    roomid = one.create_room()
    one.register(roomid, "alice")
    attempts = [
        ("alice", "10.0.0.1"),
        ("nobody", "10.0.0.2"),
        ('evil" ip=1.2.3.4\n[2026-01-01 00:00:00,000] WARNING in rooms: forged', "10.0.0.3"),
    ]
    with caplog.at_level(logging.WARNING):
        for username, ip in attempts:
            response = one.client.post(
                f"/{roomid}/login",
                json={"username": username, "password": SECRET},
                environ_base={"REMOTE_ADDR": ip},
            )
            assert response.status_code == 401
        one.login(roomid, "alice", PASSWORD)  # a success is not logged
    lines = [default_handler.format(r) for r in caplog.records if "failed login" in r.message]
    return roomid, lines


def test_each_failed_login_is_one_line_without_the_password(
    one: ChatActions, caplog: pytest.LogCaptureFixture
) -> None:
    roomid, lines = failed_logins(one, caplog)
    assert len(lines) == 3
    short = room_log_id(one.client.application, roomid)
    assert re.fullmatch(r"r:[0-9a-f]{6}", short)
    for line, ip in zip(lines, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], strict=True):
        assert "\n" not in line
        assert line.endswith(f" ip={ip}")
        assert f"failed login: room={short} user=" in line
        assert SECRET not in line
        assert roomid not in line
    assert 'user="alice"' in lines[0]
    assert SECRET not in caplog.text and PASSWORD not in caplog.text


def test_the_readme_filter_matches_with_fail2ban(
    one: ChatActions, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    fail2ban_regex = require_executable("fail2ban-regex")
    _, lines = failed_logins(one, caplog)
    log = tmp_path / "error.log"
    noise = "[2026-11-24 09:00:00,000] INFO in app: something else ip=9.9.9.9"
    log.write_text("\n".join([noise, *lines, noise]) + "\n")
    conf = tmp_path / "flaskchat.conf"
    conf.write_text(readme_filter())
    result = subprocess.run(
        [fail2ban_regex, "--print-all-matched", str(log), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Lines: 5 lines, 0 ignored, 3 matched, 2 missed", result.stdout), (
        result.stdout
    )
    hosts = re.findall(r"\|\s+.*ip=(\S+)\s*$", result.stdout, re.M)
    assert "1.2.3.4" not in result.stdout.split("Lines:", 1)[1].split("missed")[0] or hosts


def test_the_room_log_id_is_the_same_in_every_app_of_an_installation(
    make_app: Callable[[], Flask], one: ChatActions
) -> None:
    roomid = one.create_room()
    first, second = one.client.application, make_app()
    assert room_log_id(first, roomid) == room_log_id(second, roomid)
    assert room_log_id(first, roomid) != room_log_id(first, roomid[::-1])


def test_a_path_cannot_forge_a_line_of_the_app_log(
    app: Flask, one: ChatActions, caplog: pytest.LogCaptureFixture
) -> None:
    """Errors are logged with the path, which the client writes; Flask's own line
    for an unhandled exception ("Exception on <path>") included."""

    def explode() -> None:
        if "/explode" in request.path:
            raise RuntimeError("boom")
        if "/fail" in request.path:
            raise InternalServerError()

    app.before_request(explode)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    roomid = one.create_room()
    forged = "x%0d%0a[2026-01-01 00:00:00,000] WARNING in rooms: forged%E2%80%A8%E2%80%AE"
    with caplog.at_level(logging.INFO):
        assert one.client.get(f"/{roomid}/explode/{forged}").status_code == 500
        assert one.client.get(f"/{roomid}/fail/{forged}").status_code == 500
    records = [r for r in caplog.records if r.name == app.logger.name]
    assert len(records) == 3  # Flask's line and ours for the first, ours for the second
    for record in records:
        message = record.getMessage()
        assert "forged" in message
        assert not re.search("[\r\n\u2028\u202e]", message), message
        assert "\\x0d\\x0a[2026" in message
        assert "/r:" in message
        assert roomid not in message


def test_the_log_key_is_made_once_per_instance_folder(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:  # workers starting together agree on one key
        keys = set(pool.map(lambda _: log_key(None, str(tmp_path)), range(8)))
    assert len(keys) == 1
    assert keys == {log_key(None, str(tmp_path))}
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o077 == 0
    from_secret = log_key("s3cret", str(tmp_path))
    assert from_secret == log_key(b"s3cret", str(tmp_path / "elsewhere"))
    assert from_secret not in keys and from_secret != log_key("other", str(tmp_path))


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("plain text, é and 名前", "plain text, é and 名前"),
        ("a\r\nb\tc\x00\x1b[31m\x7f\x85", "a\\x0d\\x0ab\\x09c\\x00\\x1b[31m\\x7f\\x85"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("\u202eevil\u2066\u200b\ufeff", "\\u202eevil\\u2066\\u200b\\ufeff"),
        ("\udce9\U000e0001", "\\udce9\\U000e0001"),
    ],
)
def test_escape_keeps_one_record_on_one_line(text: str, logged: str) -> None:
    assert escape(text) == logged


def test_the_log_id_command(app: Flask, one: ChatActions) -> None:
    roomid = one.create_room()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["room", "log-id", roomid])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == room_log_id(app, roomid)
    dashed = runner.invoke(args=["room", "log-id", "-" + roomid[1:]])  # ids may start so
    assert dashed.exit_code == 0, dashed.output
    refused = runner.invoke(args=["room", "log-id", "not a room"])
    assert refused.exit_code != 0
    assert "not a room id" in refused.output


def test_the_rate_limiters_refusals_name_no_room(
    app: Flask, one: ChatActions, caplog: pytest.LogCaptureFixture
) -> None:
    """Flask-Limiter logs each refusal with its key, which holds the room id."""
    roomid = one.create_room()
    one.register(roomid, "alice")
    with caplog.at_level(logging.INFO, logger="flask-limiter"):
        statuses = [
            one.client.post(
                f"/{roomid}/login", json={"username": "alice", "password": SECRET}
            ).status_code
            for _ in range(6)
        ]
    assert statuses[-1] == 429
    refusals = [r.getMessage() for r in caplog.records if r.name == "flask-limiter"]
    assert refusals, "the limiter logged no refusal"
    assert all(roomid not in line for line in refusals), refusals
    assert any(room_log_id(app, roomid) in line for line in refusals), refusals
