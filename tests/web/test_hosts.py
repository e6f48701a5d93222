"""The Host header is the client's to write: with `TRUSTED_HOSTS` the app refuses
hosts it does not serve, and no reply ever repeats a forged one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from flask import Flask

from flaskchat import create_app

from actions import ChatActions
from support import close_app

FORGED = "evil.example:666"


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"TRUSTED_HOSTS": ["chat.example.org", "localhost"]}


def test_an_untrusted_host_gets_a_json_400(app: Flask) -> None:
    client = app.test_client()
    refused = client.post("/createroom", json={"alias": "x"}, base_url=f"http://{FORGED}")
    assert refused.status_code == 400
    assert refused.json is not None
    assert refused.json["succeeded"] is False
    assert refused.json["explanation"]
    assert "evil" not in refused.get_data(as_text=True)
    served = client.post("/createroom", json={"alias": "x"}, base_url="http://chat.example.org")
    assert served.status_code == 200


def test_an_untrusted_host_gets_an_html_400_for_pages(app: Flask) -> None:
    page = app.test_client().get("/", base_url=f"http://{FORGED}")
    assert page.status_code == 400
    assert page.mimetype == "text/html"
    assert "evil" not in page.get_data(as_text=True)


def test_trusted_hosts_can_be_set_in_the_environment(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASKCHAT_TRUSTED_HOSTS", '["chat.example.org"]')
    app = create_app({"TESTING": True, "STORE_URL": store_url})
    try:
        assert app.config["TRUSTED_HOSTS"] == ["chat.example.org"]
        client = app.test_client()
        assert client.get("/healthz", base_url="http://chat.example.org").status_code == 200
        assert client.get("/healthz", base_url=f"http://{FORGED}").status_code == 400
    finally:
        close_app(app)


@pytest.fixture
def open_app(store_url: str) -> Iterator[Flask]:
    """An app that trusts every Host, as one without the setting does."""
    app = create_app({"TESTING": True, "STORE_URL": store_url})
    yield app
    close_app(app)


@pytest.mark.parametrize("prefix", ["", "/chat"])
def test_the_trailing_slash_redirect_ignores_the_host(open_app: Flask, prefix: str) -> None:
    client = open_app.test_client()
    chat = ChatActions(client)
    roomid = chat.create_room()
    response = client.get(
        f"/{roomid}",
        base_url=f"http://{FORGED}{prefix}",
        headers={"X-Forwarded-Host": FORGED},
    )
    assert response.status_code in {301, 308}
    location = response.headers["Location"]
    assert "evil" not in location
    browser_url = f"https://chat.example.org{prefix}/{roomid}"
    assert urlsplit(urljoin(browser_url, location)).path == f"{prefix}/{roomid}/"
    assert urljoin(browser_url, location).startswith("https://chat.example.org/")
