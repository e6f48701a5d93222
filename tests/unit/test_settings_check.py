"""Settings are checked when the app starts: a bad value stops it with one line
that names the setting and what it takes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from flaskchat import create_app
from flaskchat.config_check import CHECKS, SettingError, check_settings, public_url
from flaskchat.settings import DEFAULTS

BASE = {"TESTING": True, "STORE_URL": "memory://"}


def test_every_setting_declares_what_it_takes() -> None:
    """A setting added to DEFAULTS without a line in CHECKS fails here."""
    assert sorted(set(DEFAULTS) - set(CHECKS)) == []


def test_the_defaults_pass() -> None:
    config = dict(DEFAULTS)
    check_settings(config)
    assert config == DEFAULTS


@pytest.mark.parametrize(
    ("name", "value", "takes"),
    [
        ("TIMEZONE", "Mars/Base", "IANA time zone"),
        ("CONVERSATION_LIMIT", "abc", "whole number of 1 or more"),
        ("CONVERSATION_LIMIT", 0, "whole number of 1 or more"),
        ("MAX_MESSAGE_LENGTH", -5, "whole number of 1 or more"),
        ("MAX_MESSAGE_LENGTH", 12.5, "whole number"),
        ("TRUSTED_PROXIES", -1, "whole number of 0 or more"),
        ("TRUSTED_PROXIES", True, "whole number"),
        ("RATELIMIT_ENABLED", "flase", "true or false"),
        ("RATELIMIT_HEADERS_ENABLED", 1, "true or false"),
        ("SSE_KEEPALIVE", 0, "seconds above 0"),
        ("SSE_KEEPALIVE", "soon", "seconds above 0"),
        ("REQUEST_BODY_TIMEOUT", -1.0, "seconds above 0"),
        ("RATELIMIT_LOGIN", "30/minut", "30/minute"),
        ("RATELIMIT_MESSAGE_USER", 10, "30/minute"),
        ("RATELIMIT_STRATEGY", "leaky-bucket", "moving-window"),
        ("PASSWORD_HASH_METHOD", "argon2", "password hash method"),
        ("PASSWORD_HASH_METHOD", "scrypt:lots", "password hash method"),
        ("STORE_URL", "postgres://db/chat", "sqlite:///"),
        ("STORE_URL", "sqlite:///", "file name"),
        ("TRUSTED_HOSTS", [1], "host names"),
        ("MAX_CONTENT_LENGTH", 0, "whole number of 1 or more, or null"),
        ("MAX_STREAMS_PER_IP", -2, "whole number of 0 or more"),
    ],
)
def test_a_bad_value_stops_the_app_with_one_line(name: str, value: Any, takes: str) -> None:
    with pytest.raises(SettingError) as caught:
        create_app({**BASE, name: value})
    message = caught.value.format_message()
    assert "\n" not in message
    assert message.startswith(f"Setting {name} (FLASKCHAT_{name}) is {value!r}")
    assert takes in message


def test_values_from_the_environment_are_checked_as_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLASKCHAT_RATELIMIT_ENABLED", "flase")
    with pytest.raises(SettingError, match=r"RATELIMIT_ENABLED.*'flase'.*true or false"):
        create_app(BASE)
    monkeypatch.setenv("FLASKCHAT_RATELIMIT_ENABLED", "false")
    monkeypatch.setenv("FLASKCHAT_SSE_KEEPALIVE", "5")
    monkeypatch.setenv("FLASKCHAT_TRUSTED_HOSTS", "chat.example.org")
    app = create_app(BASE)
    assert app.config["RATELIMIT_ENABLED"] is False
    assert app.config["SSE_KEEPALIVE"] == 5.0
    assert app.config["TRUSTED_HOSTS"] == ["chat.example.org"]
    app.extensions["flaskchat"].close()


def test_the_stream_cap_must_fit_in_the_connection_cap() -> None:
    with pytest.raises(SettingError, match="MAX_STREAMS_PER_IP must not be above"):
        create_app({**BASE, "MAX_STREAMS_PER_IP": 9, "MAX_CONNECTIONS_PER_IP": 8})


def test_secrets_never_appear_in_the_message() -> None:
    with pytest.raises(SettingError) as caught:
        create_app({**BASE, "SECRET_KEY": 123456789})
    assert "123456789" not in str(caught.value) and "SECRET_KEY" in str(caught.value)
    with pytest.raises(SettingError) as caught:
        create_app({**BASE, "STORE_URL": "postgres://chat:hunter2@db/chat"})
    assert "hunter2" not in str(caught.value)


def test_a_setting_error_is_a_value_error_to_python_callers() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        create_app({**BASE, "TIMEZONE": "Mars/Olympus"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("rediss://chat:hunter2@host/1", "rediss://chat:***@host/1"),
        ("redis://host/0?password=hunter2&db=1", "redis://host/0?password=***&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:////srv/chat.sqlite3", "sqlite:////srv/chat.sqlite3"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert public_url(url) == shown


def test_the_app_says_at_start_up_where_settings_and_data_come_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "chat.sqlite3"
    with caplog.at_level(logging.INFO, logger="flaskchat"):
        app = create_app({"STORE_URL": f"sqlite:///{store}"})
    app.extensions["flaskchat"].close()
    lines = [r.getMessage() for r in caplog.records if r.name == "flaskchat"]
    assert f"Instance folder {app.instance_path};" in lines[0]
    assert "config.py" in lines[0]
    assert lines[1] == f"Store: the SQLite file {store}."


def test_the_instance_folder_is_the_documented_one() -> None:
    """In a checkout, instance/ beside the package (an installed copy's is
    checked in tests/system/test_three_ways.py)."""
    app = create_app(BASE)
    assert Path(app.instance_path) == Path(__file__).resolve().parents[2] / "instance"
