"""The factory, the pages and the headers: configuration order, prefix mounting,
security headers and relative URLs."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from flask.testing import FlaskClient

from flaskchat import RoomStore, create_app
from flaskchat.backends.memory import MemoryBackend
from flaskchat.backends.sqlite import SqliteBackend

from actions import ChatActions


def test_default_store_is_sqlite_in_the_instance_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FLASKCHAT_STORE_URL", raising=False)
    app = create_app({"TESTING": True})
    store = app.extensions["flaskchat"]
    assert isinstance(store.backend, SqliteBackend)
    assert store.backend.path == Path(app.instance_path) / "flaskchat.sqlite3"
    store.close()


def test_configuration_order_defaults_instance_environment_test_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "config.py").write_text(
        "CONVERSATION_LIMIT = 3\nTIMEZONE = 'Europe/Paris'\nMAX_MESSAGE_LENGTH = 10\n"
    )
    monkeypatch.setattr("flask.Flask.auto_find_instance_path", lambda self: str(instance))
    monkeypatch.setenv("FLASKCHAT_STORE_URL", "memory://")
    monkeypatch.setenv("FLASKCHAT_TIMEZONE", "Asia/Tokyo")
    monkeypatch.setenv("FLASKCHAT_MAX_MESSAGE_LENGTH", "20")
    app = create_app({"TESTING": True, "MAX_MESSAGE_LENGTH": 30})
    store: RoomStore = app.extensions["flaskchat"]
    assert app.config["CONVERSATION_LIMIT"] == 3  # instance folder
    assert app.config["TIMEZONE"] == "Asia/Tokyo"  # environment beats instance
    assert app.config["MAX_MESSAGE_LENGTH"] == 30  # test_config beats environment
    assert isinstance(store.backend, MemoryBackend)
    assert (store.conversation_limit, store.max_message_length) == (3, 30)


def test_serving_from_memory_outside_tests_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        create_app({"STORE_URL": "memory://"})
    assert "memory://" in caplog.text and "restart" in caplog.text


def test_unknown_time_zone_fails_at_startup() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        create_app({"TESTING": True, "STORE_URL": "memory://", "TIMEZONE": "Mars/Olympus"})


@pytest.mark.parametrize("path", ["/", "/createroom", "/healthz", "/AAAAAAAAAAAAAAAAAAAAAA/"])
def test_security_headers_on_every_reply(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_have_no_inline_script_and_only_relative_urls(chat: ChatActions) -> None:
    roomid = chat.create_room("<b>alias</b> & co")
    for path in ["/", f"/{roomid}/"]:
        html = chat.client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
        assert " style=" not in html and "<style" not in html
        urls = re.findall(r'(?:src|href|action)="([^"]*)"', html)
        assert urls, html
        assert all(not url.startswith(("/", "http")) for url in urls), urls
    room_html = chat.client.get(f"/{roomid}/").get_data(as_text=True)
    assert "&lt;b&gt;alias&lt;/b&gt; &amp; co" in room_html
    assert "<b>alias</b>" not in room_html


def test_relative_urls_resolve_under_a_prefix(chat: ChatActions) -> None:
    roomid = chat.create_room("prefixed")
    mounted = "http://example.test/chat/"
    page = chat.client.get(f"/{roomid}/", base_url=mounted)
    assert page.status_code == 200
    browser_url = f"http://example.test/chat/{roomid}/"
    html = page.get_data(as_text=True)
    for url in re.findall(r'href="(?!data:)([^"]*)"', html):  # links stay inside the mount
        assert urlsplit(urljoin(browser_url, url)).path.startswith("/chat/"), url
    assets = re.findall(r'(?:src="|rel="stylesheet" href=")([^"]*)"', html)
    assert len(assets) >= 2
    for url in assets:
        resolved = urlsplit(urljoin(browser_url, url)).path
        assert resolved.startswith("/chat/static/"), resolved
        with chat.client.get(resolved.removeprefix("/chat"), base_url=mounted) as asset:
            assert asset.status_code == 200
    redirect = chat.client.get(f"/{roomid}", base_url=mounted)
    location = urljoin(f"http://example.test/chat/{roomid}", redirect.headers["Location"])
    assert urlsplit(location).path == f"/chat/{roomid}/"


def test_trusted_proxies_are_off_unless_configured(tmp_path: Path) -> None:
    plain = create_app({"TESTING": True, "STORE_URL": "memory://"})
    proxied = create_app({"TESTING": True, "STORE_URL": "memory://", "TRUSTED_PROXIES": 1})
    assert type(plain.wsgi_app).__name__ != "ProxyFix"
    assert type(proxied.wsgi_app).__name__ == "ProxyFix"
