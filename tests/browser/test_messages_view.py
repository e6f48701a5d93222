"""How the conversation reads and is written in a real browser: web addresses as
safe links, times of day under day separators, your own lines marked, Enter on a
touch screen, desktop notifications while the tab is hidden, and completing a
name after "@"."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Person
from flask import Flask
from playwright.sync_api import Page, expect
from test_room_page import PASSWORD, api, create_room, log, register, say

from flaskchat import RoomStore
from flaskchat.rules import username_key

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}


def shown(page: Page) -> Any:
    return log(page).locator("li:not(.pending)")


def test_web_addresses_become_links_and_nothing_else_does(
    site: str, meet: Callable[..., Person]
) -> None:
    alice = meet()
    page = alice.page
    create_room(page, site, "links")
    register(page, "alice")
    text = (
        "see https://example.com/wiki/A_(b), and HTTP://example.org/p?q=1&r=@bob. "
        "Not javascript:alert(1) data:text/html,<b>x</b> vbscript:msgbox(1) "
        'http:example.com http:/example.com https:// xhttp://evil.example "https://'
        '"><img src=x onerror=window.__xss=1>'
    )
    say(page, text)
    line = shown(page)
    expect(line).to_have_count(1)
    expect(line.locator(".text")).to_have_text(text)  # the text, whole and unchanged
    expect(line.locator(".text")).to_have_attribute("dir", "auto")
    links = line.locator("a")
    expect(links).to_have_count(2)
    expect(links).to_have_text(
        ["https://example.com/wiki/A_(b)", "HTTP://example.org/p?q=1&r=@bob"]
    )
    hrefs = [links.nth(n).get_attribute("href") for n in range(2)]
    assert hrefs == ["https://example.com/wiki/A_(b)", "http://example.org/p?q=1&r=@bob"]
    for n in range(2):
        expect(links.nth(n)).to_have_attribute("rel", "noopener noreferrer")
        expect(links.nth(n)).to_have_attribute("target", "_blank")
    expect(line.locator("mark.mention")).to_have_count(0)  # "@bob" inside a link is no mention
    assert page.locator("#messages img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert alice.errors == []


def test_times_of_day_under_day_separators_and_own_lines_marked(
    chat_app: Flask, site: str, meet: Callable[..., Person]
) -> None:
    roomid = api(site, "createroom", {"alias": "days"})["roomid"]
    api(site, f"{roomid}/register", {"username": "bot", "password": PASSWORD})
    # History over two days, written straight into the room's real SQLite store.
    store: RoomStore = chat_app.extensions["flaskchat"]
    start = datetime.now(UTC)
    for text, at in [("day one", start), ("day two", start + timedelta(days=1))]:
        store.backend.append_message(roomid, username_key("bot"), "bot", text, at, None)
    store.backend.append_message(
        roomid, username_key("bot"), "bot", "same day", start + timedelta(days=1, minutes=1), None
    )
    alice = meet(locale="en-GB", timezone_id="Asia/Tokyo")
    page = alice.page
    page.goto(f"{site}{roomid}/")
    register(page, "alice")
    say(page, "mine")
    lines = shown(page)
    expect(lines.locator(".text")).to_have_text(["day one", "day two", "same day", "mine"])

    # A separator starts each day, in the viewer's language and time zone.
    days = page.evaluate(
        """() => [...document.querySelectorAll('#messages li.message:not(.pending)')].map(
             li => new Intl.DateTimeFormat(undefined, {dateStyle: 'full'})
               .format(new Date(li.querySelector('time').dateTime)))"""
    )
    assert days[0] != days[1] and days[1] == days[2]
    expect(lines.nth(0).locator(".day")).to_have_text(days[0])
    expect(lines.nth(1).locator(".day")).to_have_text(days[1])
    expect(lines.nth(2).locator(".day")).to_have_count(0)
    expect(lines.nth(3).locator(".day")).to_have_count(0 if days[3] == days[2] else 1)

    # Each line shows the time of day; the full moment is in its title and datetime.
    stamp = lines.nth(0).locator("time")
    iso = stamp.get_attribute("datetime")
    expected = page.evaluate(
        """iso => [
             new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit'}),
             new Intl.DateTimeFormat(undefined, {dateStyle: 'full', timeStyle: 'medium'}),
           ].map(f => f.format(new Date(iso)))""",
        iso,
    )
    expect(stamp).to_have_text(expected[0])
    assert len(expected[0]) == 5  # HH:MM
    expect(stamp).to_have_attribute("title", expected[1])

    # Your own line is marked, visibly and for assistive technology.
    expect(log(page).locator("li.mine .text")).to_have_text(["mine"])
    expect(lines.nth(3)).to_have_accessible_description("Your message")
    expect(lines.nth(0)).not_to_have_accessible_description("Your message")
    tints = page.evaluate(
        """() => [...document.querySelectorAll('#messages li.message')].map(
             li => getComputedStyle(li).backgroundColor)"""
    )
    assert tints[3] != tints[0]

    # Copying several lines gives the seed's lines, as get_conversation has them.
    copied = page.evaluate(
        """() => {
             getSelection().selectAllChildren(document.getElementById('messages'));
             const event = new ClipboardEvent('copy', {
               clipboardData: new DataTransfer(), bubbles: true, cancelable: true});
             document.getElementById('messages').dispatchEvent(event);
             return event.clipboardData.getData('text/plain');
           }"""
    )
    assert copied == "\n".join(api(site, f"{roomid}/get_conversation"))
    assert alice.errors == []


def test_on_a_touch_screen_enter_adds_a_line_and_send_sends(
    site: str, meet: Callable[..., Person]
) -> None:
    phone = meet(**PHONE)
    page = phone.page
    create_room(page, site, "thumbs")
    register(page, "alice")
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")
    box = page.get_by_label("Message", exact=True)
    expect(box).to_have_attribute("enterkeyhint", "enter")
    expect(box).to_have_attribute("placeholder", "Enter adds a line, Send sends")
    box.tap()
    box.press_sequentially("first line")
    box.press("Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(log(page).locator("li")).to_have_count(0)  # Enter sent nothing
    page.get_by_role("button", name="Send").tap()
    expect(shown(page).locator(".text")).to_have_text(["first line\nsecond line"])
    expect(box).to_have_value("")
    assert phone.errors == []


# A stand-in for the browser's Notification, recording what the page shows, and a
# tab that can be switched away from (hidden) and back.
NOTIFICATION_STUB = """
  window.__notes = [];
  window.__asked = 0;
  window.Notification = class {
    static permission = 'default';
    static requestPermission() {
      window.__asked += 1;
      window.Notification.permission = 'granted';
      return Promise.resolve('granted');
    }
    constructor(title, options) { window.__notes.push({title, ...options}); }
    close() {}
  };
  window.__setHidden = (hidden) => {
    Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
    Object.defineProperty(document, 'visibilityState', {
      configurable: true, get: () => (hidden ? 'hidden' : 'visible')});
    document.dispatchEvent(new Event('visibilitychange'));
  };
"""


def notes(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate("window.__notes")
    return result


def test_notifications_while_hidden_after_permission(
    site: str, meet: Callable[..., Person]
) -> None:
    alice, bob = meet(), meet()
    alice.page.add_init_script(NOTIFICATION_STUB)
    page = alice.page
    room = create_room(page, site, "pings")
    register(page, "alice")
    bob.page.goto(room)
    register(bob.page, "bob")

    choice = page.get_by_label("While this tab is hidden, notify me of")
    expect(choice).to_have_value("mentions")
    page.evaluate("window.__setHidden(true)")
    say(bob.page, "before you allowed it, @alice")
    expect(shown(page)).to_have_count(1)
    assert notes(page) == []  # not allowed yet

    allow = page.get_by_role("button", name="Allow desktop notifications")
    allow.click()
    expect(allow).to_be_hidden()
    assert page.evaluate("window.__asked") == 1
    say(bob.page, "nothing for alice here")
    say(bob.page, "hi @Alice, look")
    expect(shown(page)).to_have_count(3)
    expect(page).to_have_title("(3) pings · flaskchat")  # the unread count stays
    assert notes(page) == [
        {
            "title": "bob in pings",
            "body": "hi @Alice, look",
            "tag": page.evaluate("location.pathname"),
        }
    ]

    choice.select_option("all")  # per room, kept in this browser
    say(bob.page, "anything at all")
    expect(shown(page)).to_have_count(4)
    say(page, "@alice my own line")  # never for your own message
    expect(shown(page)).to_have_count(5)
    page.evaluate("window.__setHidden(false)")  # looking: no notification
    expect(page).to_have_title("pings · flaskchat")
    say(bob.page, "@alice while you look")
    expect(shown(page)).to_have_count(6)
    assert [note["body"] for note in notes(page)] == ["hi @Alice, look", "anything at all"]

    page.reload()
    expect(page.get_by_label("While this tab is hidden, notify me of")).to_have_value("all")
    assert alice.errors == [] and bob.errors == []


def test_typing_a_name_after_at_offers_who_is_online(
    site: str, meet: Callable[..., Person]
) -> None:
    alice, bob, bea = meet(), meet(), meet()
    page = alice.page
    room = create_room(page, site, "names")
    register(page, "alice")
    for person, name in [(bob, "bob"), (bea, "bea")]:
        person.page.goto(room)
        register(person.page, name)
    expect(page.locator("#online li")).to_have_count(3)

    box = page.get_by_label("Message", exact=True)
    names = page.get_by_role("listbox", name="Names to mention")
    box.press_sequentially("hi @b")
    expect(names).to_be_visible()
    options = names.get_by_role("option")
    expect(options).to_have_count(2)
    offered = options.all_text_contents()
    assert sorted(offered) == ["bea", "bob"]
    expect(box).to_have_attribute("aria-activedescendant", options.nth(0).get_attribute("id") or "")
    box.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", options.nth(1).get_attribute("id") or "")
    box.press("Enter")  # completes; sends nothing
    expect(box).to_have_value(f"hi @{offered[1]} ")
    expect(names).to_be_hidden()
    expect(box).to_be_focused()

    box.press_sequentially("@")  # everyone online but yourself
    expect(options).to_have_count(2)
    box.press("Escape")
    expect(names).to_be_hidden()
    box.press_sequentially("BE")  # without regard to case
    expect(options).to_have_text(["bea"])
    box.press("Tab")
    expect(box).to_have_value(f"hi @{offered[1]} @bea ")
    expect(box).to_be_focused()

    box.press_sequentially("and @bo")
    names.get_by_role("option", name="bob").click()
    expect(box).to_have_value(f"hi @{offered[1]} @bea and @bob ")
    box.press_sequentially("email@bob.example")  # "@" inside a word offers nothing
    expect(names).to_be_hidden()
    box.press("Enter")
    expect(shown(page).locator(".text")).to_have_text(
        [f"hi @{offered[1]} @bea and @bob email@bob.example"]
    )
    assert alice.errors == [] and bob.errors == [] and bea.errors == []
