"""Two people chat in Chromium through the shipped nginx server block, with the app
mounted under /chat/ by its commented variant (X-Forwarded-Prefix), in front of
gunicorn with the shipped config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Person
from playwright.sync_api import expect
from test_room_page import create_room, log, log_in, register, say

from nginx_proxy import Proxied, behind_nginx

pytestmark = [pytest.mark.browser, pytest.mark.system]


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    with behind_nginx(tmp_path, store_url, under_chat=True) as proxied:
        yield proxied


def test_two_people_chat_through_nginx_under_chat(
    proxied: Proxied, meet: Callable[..., Person]
) -> None:
    site = proxied.url + "/chat/"
    alice, bob = meet(), meet()
    requests: list[str] = []
    for person in (alice, bob):
        person.page.on("request", lambda request: requests.append(request.url))

    room = create_room(alice.page, site, "behind nginx")
    assert room.startswith(site)
    register(alice.page, "alice")
    alice.page.get_by_role("button", name="Log out").click()
    log_in(alice.page, "alice")
    expect(alice.page.get_by_role("status")).to_have_text("Live")
    bob.page.goto(room)
    register(bob.page, "bob")
    expect(alice.page.locator("#online li")).to_have_text(["alice", "bob"])

    say(alice.page, "hello through nginx")
    expect(log(bob.page).locator("li .text")).to_have_text(["hello through nginx"])
    say(bob.page, "and back")
    expect(log(alice.page).locator("li:not(.pending) .text")).to_have_text(
        ["hello through nginx", "and back"]
    )

    assert requests and all(url.startswith(site) for url in requests), requests
    # The app knew where it was mounted: nginx told it, through X-Forwarded-Prefix.
    posts = [line.split()[4:6] for line in proxied.access_log(" POST ")]
    assert posts and all(path.startswith("/chat/") for _, path in posts), posts
    assert alice.errors == [] and bob.errors == []
