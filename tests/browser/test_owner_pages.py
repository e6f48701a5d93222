"""Room owners in a real browser: the lobby hands over the owner link, the owner
deletes messages, bans and lets back in, closes registration, sets retention,
exports and deletes the room; members see it all happen live. By mouse and by
keyboard, on a desktop and on a phone-sized screen."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ARTIFACTS, Person
from flask import Flask
from playwright.sync_api import Locator, Page, expect
from test_room_page import PASSWORD, api, log, log_in, refused, register, say

from flaskchat import create_app

from support import ServedApp, close_app

pytestmark = pytest.mark.browser

REMOVED = "You were removed from this room by its owner."
PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True}


@pytest.fixture
def store_site(store_url: str) -> Iterator[str]:
    """The app at the root of a real HTTP server, on SQLite or on Redis."""
    app: Flask = create_app(
        {
            "TESTING": True,
            "STORE_URL": store_url,
            "PASSWORD_HASH_METHOD": "scrypt:1024:8:1",
            "RATELIMIT_ENABLED": False,
            "SSE_KEEPALIVE": 1.0,
        }
    )
    with ServedApp(app) as served:
        yield served.url + "/"
    close_app(app)


def new_room(base: str, alias: str) -> tuple[str, str]:
    """A room made through the API: its URL and its owner key."""
    created = api(base, "createroom", {"alias": alias})
    return f"{base}{created['roomid']}/", created["owner_key"]


def owner_link(room: str, key: str) -> str:
    return f"{room}#owner={key}"


def open_as_owner(page: Page, room: str, key: str) -> None:
    page.goto(owner_link(room, key))
    expect(page.get_by_role("heading", name="Room owner")).to_be_visible()


def join(person: Person, room: str, username: str) -> Page:
    person.page.goto(room)
    register(person.page, username)
    return person.page


def message(page: Page, text: str) -> Locator:
    """The shown (not pending) message whose text is exactly `text`."""
    return (
        log(page)
        .locator("li:not(.pending)")
        .filter(has=page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$")))
    )


def shown_texts(page: Page) -> Locator:
    return log(page).locator("li:not(.pending) .text")


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways ({width}px)"


def tab_to(page: Page, name: str, limit: int = 80) -> None:
    """Press Tab until the control named `name` has focus, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e ? (e.getAttribute('aria-label') || e.textContent || '').trim() : ''; })()"
        )
        if focused == name:
            return
    raise AssertionError(f"Tab never reached {name!r}")


def test_the_lobby_shows_both_links_and_the_owner_link_leaves_the_address_bar(
    site: str, meet: Callable[..., Person]
) -> None:
    alice = meet(permissions=["clipboard-read", "clipboard-write"])
    page = alice.page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(site)
    page.get_by_label("Room name").fill("Owned")
    page.get_by_role("button", name="Create room").click()

    room_link = page.get_by_label("Room link")
    expect(room_link).to_have_value(re.compile(rf"^{re.escape(site)}[A-Za-z0-9_-]{{22}}/$"))
    room = room_link.input_value()
    expect(page.get_by_label("Owner link")).to_have_value(
        re.compile(rf"^{re.escape(room)}#owner=\S{{40,}}$")
    )
    link = page.get_by_label("Owner link").input_value()
    key = link.split("#owner=", 1)[1]
    expect(page.get_by_text("Keep the owner link secret.")).to_be_visible()
    assert page.url == site  # the lobby stays until the links are kept
    page.get_by_role("button", name="Copy owner link").click()
    expect(page.get_by_text("Owner link copied. Keep it secret.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == link

    # This browser is the owner's: the plain room link opens with the owner tools.
    page.get_by_role("link", name="Go to the room as its owner").click()
    page.wait_for_url(room)
    expect(page.get_by_role("heading", name="Room owner")).to_be_visible()

    # The owner link on another device: the key is kept, the fragment dropped at once.
    laptop = meet(permissions=["clipboard-read", "clipboard-write"])
    laptop.page.on("request", lambda request: requests.append(request.url))
    laptop.page.goto(link)
    assert laptop.page.url == room
    expect(laptop.page.get_by_role("heading", name="Room owner")).to_be_visible()
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    assert laptop.page.evaluate(f"localStorage.getItem('flaskchat:owner:{roomid}')") == key
    laptop.page.get_by_role("button", name="Copy room link").click()
    assert laptop.page.evaluate("navigator.clipboard.readText()") == room
    laptop.page.goto(site)  # the lobby remembers the room, without the key
    expect(laptop.page.get_by_role("link", name="Owned")).to_have_attribute("href", room)

    assert requests and not [url for url in requests if key in url]  # never sent to the server
    assert alice.errors == [] and laptop.errors == []


def test_the_owner_deletes_and_bans_and_members_see_it_live(
    store_site: str, meet: Callable[..., Person]
) -> None:
    room, key = new_room(store_site, "moderated")
    alice, bob, carol = meet(), meet(), meet()
    open_as_owner(alice.page, room, key)
    register(alice.page, "alice")
    join(bob, room, "Bob")
    join(carol, room, "carol")
    say(bob.page, "spam spam")
    say(carol.page, "hello all")
    for page in (alice.page, bob.page, carol.page):
        expect(shown_texts(page)).to_have_text(["spam spam", "hello all"])

    # The owner deletes another member's message: it leaves every open page.
    message(alice.page, "spam spam").get_by_role("button", name="Delete message").click()
    for page in (alice.page, bob.page, carol.page):
        expect(shown_texts(page)).to_have_text(["hello all"])

    # Ban from the online list: Bob's page says so and offers nothing to send.
    online = alice.page.locator("#online li")
    expect(online).to_have_count(3)
    expect(online.filter(has_text="alice").get_by_role("button")).to_have_count(0)
    alice.page.get_by_role("button", name="Ban Bob").click()
    expect(bob.page.get_by_role("alert")).to_have_text(REMOVED)
    expect(bob.page.get_by_label("Message", exact=True)).to_be_hidden()
    expect(bob.page.get_by_role("button", name="Log in")).to_be_hidden()
    for page in (alice.page, carol.page):
        expect(page.locator("#online li")).to_have_text(["alice", "carol"])
    expect(alice.page.locator("#banned li")).to_have_text(["Bob"])
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    assert refused(store_site, f"{roomid}/login", {"username": "bob", "password": PASSWORD}) == 403

    # Unban from the settings panel: Bob may log in again, and a reload does not
    # mistake the old ban (replayed from the room's log) for a new one.
    alice.page.get_by_role("button", name="Unban Bob").click()
    expect(alice.page.get_by_text("Nobody has been removed.")).to_be_visible()
    expect(bob.page.get_by_text(re.compile("let you back in"))).to_be_visible()  # good news
    log_in(bob.page, "Bob")
    bob.page.reload()
    expect(bob.page.get_by_role("status")).to_have_text("Live")
    say(bob.page, "sorry")
    expect(shown_texts(carol.page)).to_have_text(["hello all", "sorry"])
    expect(bob.page.get_by_text("Logged in as")).to_be_visible()
    expect(bob.page.get_by_text(REMOVED)).to_have_count(0)
    assert alice.errors == [] and bob.errors == [] and carol.errors == []


def test_members_delete_their_own_messages_only(site: str, meet: Callable[..., Person]) -> None:
    room, _ = new_room(site, "members")
    bob, carol = meet(), meet()
    join(bob, room, "bob")
    join(carol, room, "carol")
    say(bob.page, "mine")
    say(carol.page, "theirs")
    expect(shown_texts(bob.page)).to_have_text(["mine", "theirs"])
    expect(message(bob.page, "theirs").get_by_role("button")).to_have_count(0)
    expect(bob.page.get_by_role("button", name=re.compile("^Ban"))).to_have_count(0)
    expect(bob.page.get_by_role("heading", name="Room owner")).to_be_hidden()

    message(bob.page, "mine").get_by_role("button", name="Delete message").click()
    expect(shown_texts(bob.page)).to_have_text(["theirs"])
    expect(shown_texts(carol.page)).to_have_text(["theirs"])
    bob.page.get_by_role("button", name="Log out").click()
    expect(log(bob.page).get_by_role("button")).to_have_count(0)  # nothing is theirs now
    assert bob.errors == [] and carol.errors == []


def test_settings_close_registration_and_set_retention(
    site: str, meet: Callable[..., Person]
) -> None:
    room, key = new_room(site, "closing")
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    owner, newcomer = meet(), meet()
    open_as_owner(owner.page, room, key)
    panel = owner.page.locator("#owner-tools")
    expect(panel.get_by_label("Open: anyone with the link can join")).to_be_checked()
    panel.get_by_label("Closed: members only").check()
    panel.get_by_label("Delete messages older than (days)").fill("30")
    panel.get_by_role("button", name="Save settings").click()
    expect(panel.get_by_text("Settings saved.")).to_be_visible()
    assert api(site, f"{roomid}/settings") == {"registration": "closed", "retention_days": 30}

    newcomer.page.goto(room)
    newcomer.page.get_by_label("Choose a username").fill("dave")
    newcomer.page.get_by_label("Choose a password").fill(PASSWORD)
    newcomer.page.get_by_label("Password again").fill(PASSWORD)
    newcomer.page.get_by_role("button", name="Register").click()
    expect(newcomer.page.get_by_role("alert")).to_have_text("This room is closed to new members.")

    owner.page.reload()  # the panel shows what the server keeps
    expect(panel.get_by_label("Closed: members only")).to_be_checked()
    expect(panel.get_by_label("Delete messages older than (days)")).to_have_value("30")
    panel.get_by_label("Open: anyone with the link can join").check()
    panel.get_by_label("Delete messages older than (days)").fill("")
    panel.get_by_role("button", name="Save settings").click()
    expect(panel.get_by_text("Settings saved.")).to_be_visible()
    assert api(site, f"{roomid}/settings") == {"registration": "open", "retention_days": None}
    assert owner.errors == [] and newcomer.errors == []


def test_exports_download_as_json_and_as_text(
    site: str, meet: Callable[..., Person], tmp_path: Path
) -> None:
    room, key = new_room(site, "Export me")
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    owner = meet(accept_downloads=True)
    page = owner.page
    page.add_init_script(
        """window.__violations = [];
           document.addEventListener('securitypolicyviolation',
             (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));"""
    )
    open_as_owner(page, room, key)
    register(page, "alice")
    for text in ("first", "second <b>bold</b>"):
        say(page, text)
    expect(shown_texts(page)).to_have_count(2)

    with page.expect_download() as json_download:
        page.get_by_role("button", name="Download as JSON").click()
    assert json_download.value.suggested_filename == "Export-me.json"
    saved = tmp_path / "export.json"
    json_download.value.save_as(saved)
    exported: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
    assert (exported["roomid"], exported["alias"]) == (roomid, "Export me")
    assert [m["text"] for m in exported["messages"]] == ["first", "second <b>bold</b>"]

    with page.expect_download() as text_download:
        page.get_by_role("button", name="Download as text").click()
    assert text_download.value.suggested_filename == "Export-me.txt"
    saved = tmp_path / "export.txt"
    text_download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert lines == api(site, f"{roomid}/get_conversation")
    assert lines[1].endswith(" <alice> second <b>bold</b>")
    assert page.evaluate("window.__violations") == []
    assert owner.errors == []


def test_deleting_the_room_asks_first_and_tells_every_open_page(
    site: str, meet: Callable[..., Person]
) -> None:
    room, key = new_room(site, "doomed")
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    owner, bob = meet(), meet()
    open_as_owner(owner.page, room, key)
    join(bob, room, "bob")
    say(bob.page, "still here")
    expect(shown_texts(owner.page)).to_have_text(["still here"])

    dialog = owner.page.get_by_role("dialog", name="Delete this room?")
    owner.page.get_by_role("button", name="Delete room…").click()
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert api(site, f"{roomid}/settings")["registration"] == "open"  # still there

    owner.page.get_by_role("button", name="Delete room…").click()
    dialog.get_by_role("button", name="Delete room for good").click()
    expect(owner.page.get_by_role("alert")).to_have_text(re.compile("You deleted this room"))
    expect(bob.page.get_by_role("alert")).to_have_text("This room was deleted by its owner.")
    for page in (owner.page, bob.page):
        expect(log(page).locator("li")).to_have_count(0)
        expect(page.get_by_label("Message", exact=True)).to_be_hidden()
        expect(page.get_by_role("status")).to_have_text("Deleted")
    assert refused(site, f"{roomid}/settings", {"owner_key": key}) == 404
    owner.page.goto(site)  # the lobby forgets it
    expect(owner.page.get_by_role("link", name="doomed")).to_have_count(0)
    assert owner.errors == [] and bob.errors == []


def test_owner_controls_work_from_the_keyboard_alone(
    site: str, meet: Callable[..., Person]
) -> None:
    room, key = new_room(site, "keys")
    owner, bob = meet(), meet()
    page = owner.page
    open_as_owner(page, room, key)
    join(bob, room, "bob")
    say(bob.page, "one")
    say(bob.page, "two")
    expect(shown_texts(page)).to_have_text(["one", "two"])
    expect(page.locator("#online li")).to_have_text(["bob"])

    page.locator("body").focus()
    tab_to(page, "Delete message")
    page.keyboard.press("Enter")
    expect(shown_texts(bob.page)).to_have_text(["two"])
    # The keyboard stays in the conversation, on the next message's controls.
    expect(message(page, "two").get_by_role("button", name="Delete message")).to_be_focused()

    tab_to(page, "Ban bob")  # the message's author
    expect(message(page, "two").get_by_role("button", name="Ban bob")).to_be_focused()
    tab_to(page, "Ban bob")  # on to the online list
    expect(page.locator("#online").get_by_role("button", name="Ban bob")).to_be_focused()
    page.keyboard.press("Space")
    expect(bob.page.get_by_role("alert")).to_have_text(REMOVED)

    tab_to(page, "Delete room…")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()  # the safe choice first
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(page.get_by_role("button", name="Delete room…")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Delete room for good")).to_be_focused()
    page.keyboard.press("Enter")
    expect(bob.page.get_by_role("alert")).to_have_text("This room was deleted by its owner.")
    assert owner.errors == [] and bob.errors == []


def test_the_owner_flow_on_a_phone_sized_screen(site: str, meet: Callable[..., Person]) -> None:
    phone, bob = meet(**PHONE), meet()
    page = phone.page
    page.goto(site)
    page.get_by_label("Room name").fill("A room with a rather long name to wrap on a small phone")
    page.get_by_role("button", name="Create room").click()
    expect(page.get_by_label("Owner link")).to_have_value(re.compile("#owner="))
    expect(page.get_by_text("Keep the owner link secret.")).to_be_visible()
    no_sideways_scroll(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lobby-owner-links-360px.png"), full_page=True)
    room = page.get_by_label("Room link").input_value()
    page.get_by_role("link", name="Go to the room as its owner").click()
    page.wait_for_url(room)
    register(page, "alice")
    join(bob, room, "bob")
    say(bob.page, "a-very-long-word-" * 12)
    say(bob.page, "keep this")
    expect(shown_texts(page)).to_have_count(2)
    no_sideways_scroll(page)

    message(page, "a-very-long-word-" * 12).get_by_role("button", name="Delete message").tap()
    expect(shown_texts(bob.page)).to_have_text(["keep this"])
    page.locator("#online").get_by_role("button", name="Ban bob").tap()
    expect(bob.page.get_by_role("alert")).to_have_text(REMOVED)
    expect(page.locator("#banned li")).to_have_text(["bob"])
    no_sideways_scroll(page)
    page.screenshot(path=str(ARTIFACTS / "room-owner-360px.png"), full_page=True)

    page.get_by_role("button", name="Delete room…").tap()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    box = dialog.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    dialog.get_by_role("button", name="Delete room for good").tap()
    expect(bob.page.get_by_role("alert")).to_have_text("This room was deleted by its owner.")
    expect(page.get_by_role("alert")).to_have_text(re.compile("You deleted this room"))
    assert phone.errors == [] and bob.errors == []
