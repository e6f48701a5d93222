"""The room page's flow in a real browser: a line sent offline stays in view and
says it waits, leaving the page ends its stream at once, each form's news sits in
that form, the keyboard moves on to the next useful control, and loading older
messages keeps the reader's place."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Person
from flask import Flask
from playwright.sync_api import Page, expect
from test_room_page import PASSWORD, api, log, register, say

from support import ServedApp

pytestmark = pytest.mark.browser


@pytest.fixture
def served(chat_app: Flask) -> Iterator[ServedApp]:
    """The app on a real HTTP server that counts the requests it is serving."""
    with ServedApp(chat_app) as server:
        yield server


def room_with_history(base: str, count: int) -> str:
    """A room whose `bot` has said n0 … n{count-1}: its URL."""
    roomid = api(base, "createroom", {"alias": "history"})["roomid"]
    api(base, f"{roomid}/register", {"username": "bot", "password": PASSWORD})
    token = api(base, f"{roomid}/login", {"username": "bot", "password": PASSWORD})["token"]
    for n in range(count):
        api(base, f"{roomid}/message", {"username": "bot", "token": token, "message": f"n{n}"})
    return f"{base}{roomid}/"


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until `condition` holds; generous, for a loaded machine."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.1)


def go_offline(person: Person, offline: bool) -> None:
    person.context.set_offline(offline)
    person.page.evaluate(f"window.dispatchEvent(new Event('{'offline' if offline else 'online'}'))")


def test_a_line_sent_offline_stays_in_view_and_says_it_waits(
    site: str, meet: Callable[..., Person]
) -> None:
    room = room_with_history(site, 60)
    bob = meet()
    page = bob.page
    page.goto(room)
    register(page, "bob")
    expect(log(page).locator("li:not(.pending)")).to_have_count(50)

    go_offline(bob, True)
    say(page, "typed while offline")
    pending = log(page).locator("li.pending")
    expect(pending).to_have_count(1)
    expect(pending).to_be_in_viewport(ratio=0.9)  # all of it, not just an edge
    expect(pending.locator(".note")).to_have_text("waiting for connection")
    composer = page.locator("#composer")
    expect(composer.get_by_text(re.compile("offline.*when the connection returns"))).to_be_visible()

    say(page, "and again")  # said once: typing on does not take the notice away
    expect(pending).to_have_count(2)
    expect(pending.last).to_be_in_viewport(ratio=0.9)
    expect(pending.locator(".note")).to_have_text(["waiting for connection"] * 2)
    expect(composer.get_by_text(re.compile("when the connection returns"))).to_have_count(1)

    go_offline(bob, False)
    shown = log(page).locator("li:not(.pending) .text")
    expect(shown.last).to_have_text("and again", timeout=15000)
    expect(pending).to_have_count(0)
    expect(composer.get_by_text(re.compile("when the connection returns"))).to_have_count(0)
    assert [e for e in bob.errors if "ERR_INTERNET_DISCONNECTED" not in e] == []  # Chromium's own


def test_leaving_the_page_or_logging_out_ends_presence(
    served: ServedApp, meet: Callable[..., Person]
) -> None:
    site = served.url + "/"
    alice, bob = meet(), meet()
    roomid = api(site, "createroom", {"alias": "presence"})["roomid"]
    alice.page.goto(f"{site}{roomid}/")
    register(alice.page, "alice")
    bob.page.goto(f"{site}{roomid}/")
    register(bob.page, "bob")
    online = alice.page.locator("#online li")
    expect(online).to_have_text(["alice", "bob"])
    wait_for(lambda: served.active == 2)  # one event stream each

    # The page goes away (closed, or into the back-forward cache): its stream ends
    # now, not when the server next finds the connection dead.
    bob.page.evaluate(
        "window.dispatchEvent(new PageTransitionEvent('pagehide', {persisted: true}))"
    )
    wait_for(lambda: served.active == 1)
    bob.page.evaluate(
        "window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))"
    )
    wait_for(lambda: served.active == 2)
    expect(bob.page.get_by_role("status")).to_have_text("Live")

    bob.page.get_by_role("button", name="Log out").click()
    expect(online).to_have_text(["alice"], timeout=3000)
    assert alice.errors == [] and bob.errors == []


ALERT_RED = "rgb(161, 29, 43)"


def test_each_forms_news_sits_in_that_form_and_goes_when_it_is_edited(
    site: str, meet: Callable[..., Person]
) -> None:
    someone = meet(permissions=["clipboard-read", "clipboard-write"])
    page = someone.page
    roomid = api(site, "createroom", {"alias": "notices"})["roomid"]
    page.goto(f"{site}{roomid}/")
    expect(page.get_by_role("status")).to_have_text("Live")
    form = page.locator("#register-form")

    register(page, "alice", again="something else")
    expect(form.get_by_role("alert")).to_have_text(re.compile("not the same"))
    page.get_by_label("Password again").fill(PASSWORD)  # editing the form clears it
    expect(page.get_by_role("alert")).to_have_count(0)

    register(page, "bad name!", again=PASSWORD)  # the server refuses the name
    expect(form.get_by_role("alert")).to_have_text(re.compile("only letters, digits"))
    # The browser's own check stops the next try: the old complaint goes anyway.
    page.get_by_label("Choose a password").evaluate("field => { field.value = '' }")
    form.get_by_role("button", name="Register").click()
    expect(page.get_by_role("alert")).to_have_count(0)

    page.get_by_role("button", name="Copy room link").click()
    copied = page.get_by_text(re.compile("^Room link copied"))
    expect(copied).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)  # good news is no alarm
    colour = copied.evaluate("notice => getComputedStyle(notice).color")
    assert colour == page.evaluate("getComputedStyle(document.body).color") != ALERT_RED
    assert someone.errors == []


def test_the_keyboard_goes_on_to_the_next_useful_control(
    site: str, meet: Callable[..., Person]
) -> None:
    someone = meet()
    page = someone.page
    page.goto(site)
    page.get_by_label("Room name").fill("focus")
    page.get_by_label("Room name").press("Enter")
    expect(page.get_by_role("button", name="Copy room link")).to_be_focused()

    page.get_by_role("link", name="Go to the room as its owner").click()
    register(page, "alice")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Username", exact=True)).to_be_focused()
    assert someone.errors == []


def top_of(page: Page, text: str) -> float:
    """How far the line saying `text` is below the top edge of the message list."""
    offset: float = log(page).evaluate(
        """(list, text) => {
             const item = [...list.children]
               .find((li) => li.querySelector('.text')?.textContent === text);
             return item.getBoundingClientRect().top - list.getBoundingClientRect().top;
           }""",
        text,
    )
    return offset


def test_loading_older_messages_keeps_the_readers_place(
    site: str, meet: Callable[..., Person]
) -> None:
    room = room_with_history(site, 60)
    reader = meet()
    page = reader.page
    page.goto(room)
    lines = log(page).locator("li:not(.pending) .text")
    expect(lines).to_have_count(50)
    log(page).evaluate("list => { list.scrollTop = 0 }")  # read up to the oldest shown
    before = top_of(page, "n10")
    page.get_by_role("button", name="Load older messages").click()
    expect(lines).to_have_count(60)
    assert abs(top_of(page, "n10") - before) <= 2
    assert log(page).evaluate("list => list.scrollTop") > 0  # n0 … n9 are above, to scroll to
    assert reader.errors == []
