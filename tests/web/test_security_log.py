"""Failed logins leave one stable, unforgeable line that the README's fail2ban
filter matches, and never the password."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
from flask import Flask
from flask.logging import default_handler

from actions import PASSWORD, ChatActions
from support import require_executable

README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "hunter2-not-the-password"


def readme_filter() -> str:
    text = README.read_text()
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
    for line, ip in zip(lines, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], strict=True):
        assert "\n" not in line
        assert line.endswith(f" ip={ip}")
        assert f"failed login: room={roomid} user=" in line
        assert SECRET not in line
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
