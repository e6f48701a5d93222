"""People using the pages in a real browser: create a room, register, log in and
out, chat live, drop off the network and come back, and never see markup run or
the content security policy broken."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ARTIFACTS, Person
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'


def api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def create_room(page: Page, base: str, alias: str) -> str:
    """Create a room in the lobby, then follow its link there, as its owner."""
    page.goto(base)
    page.get_by_label("Room name").fill(alias)
    page.get_by_role("button", name="Create room").click()
    page.get_by_role("link", name="Go to the room as its owner").click()
    page.wait_for_url(re.compile(r".*/[A-Za-z0-9_-]{22}/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(alias)
    return page.url


def register(page: Page, username: str, password: str = PASSWORD, again: str | None = None) -> None:
    page.get_by_label("Choose a username").fill(username)
    page.get_by_label("Choose a password").fill(password)
    page.get_by_label("Password again").fill(password if again is None else again)
    page.get_by_role("button", name="Register").click()
    if again is None:  # registering logs in: wait until it has
        expect(page.get_by_text("Logged in as")).to_be_visible()
        expect(page.get_by_role("status")).to_have_text("Live")


def log_in(page: Page, username: str, password: str = PASSWORD) -> None:
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Logged in as")).to_be_visible()


def session(page: Page) -> Any:
    """What the page keeps in local storage for this room: {username, token}, or None."""
    return page.evaluate(
        "JSON.parse(localStorage.getItem('flaskchat:session:' + location.pathname))"
    )


def refused(base: str, path: str, body: dict[str, Any]) -> int:
    """The status of an API call that must fail."""
    with pytest.raises(urllib.error.HTTPError) as error:
        api(base, path, body)
    error.value.close()
    return error.value.code


def say(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def log(page: Page) -> Any:
    return page.get_by_role("log")


def texts(page: Page) -> list[str]:
    return log(page).locator("li:not(.pending) .text").all_text_contents()


def test_create_register_log_in_chat_and_reload(site: str, meet: Callable[..., Person]) -> None:
    alice = meet()
    page = alice.page
    room = create_room(page, site, "Bob and Al's room")
    expect(page).to_have_title("Bob and Al's room · flaskchat")
    expect(page.get_by_role("status")).to_have_text("Live")
    roomid = room.rstrip("/").rsplit("/", 1)[1]

    register(page, "alice", again="something else")
    expect(page.get_by_role("alert")).to_contain_text("not the same")
    login = {"username": "alice", "password": PASSWORD}
    assert refused(site, f"{roomid}/login", login) == 401  # nothing was registered

    register(page, "alice")  # registering logs in
    first = session(page)
    assert first["username"] == "alice"
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_label("Message", exact=True)).to_be_hidden()
    assert session(page) is None
    stale = {"username": "alice", "token": first["token"], "message": "still?"}
    assert refused(site, f"{roomid}/message", stale) == 401  # the server forgot it too

    log_in(page, "alice")
    say(page, "hello")
    expect(log(page).locator("li")).to_have_text([re.compile(r"^\S.* <alice> hello$")])
    expect(log(page).locator("li .note")).to_have_count(0)
    [line] = api(site, f"{roomid}/get_conversation")
    assert re.fullmatch(r"\d\d-\d\d-\d\d \d\d:\d\d:\d\d <alice> hello", line)

    page.reload()
    expect(page.get_by_text("Logged in as")).to_be_visible()
    expect(log(page).locator("li .text")).to_have_text(["hello"])
    assert session(page)["token"] != first["token"]

    page.goto(site)  # the lobby remembers the room, in this browser only
    expect(page.get_by_role("link", name="Bob and Al's room")).to_have_attribute("href", room)
    assert alice.errors == []


def test_the_lobby_explains_a_refused_room_name(site: str, meet: Callable[..., Person]) -> None:
    someone = meet()
    page = someone.page
    page.goto(site)
    page.get_by_label("Room name").fill("   ")
    page.get_by_label("Room name").press("Enter")
    expect(page.get_by_role("alert")).to_have_text("Please give the room a name.")
    assert page.url == site
    assert someone.errors == []


def test_a_revoked_session_asks_to_log_in_again_and_keeps_the_text(
    site: str, meet: Callable[..., Person]
) -> None:
    alice = meet()
    page = alice.page
    room = create_room(page, site, "revoked")
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    register(page, "alice")
    api(site, f"{roomid}/logout", session(page))  # as if logged out on another device
    say(page, "are you there?")
    expect(page.get_by_role("alert")).to_have_text(re.compile("not logged in"))
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert session(page) is None
    log_in(page, "alice")
    expect(page.get_by_label("Message", exact=True)).to_have_value("are you there?")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(log(page).locator("li:not(.pending) .text")).to_have_text(["are you there?"])
    assert alice.errors == []


def test_two_people_chat_live_and_see_who_is_online(site: str, meet: Callable[..., Person]) -> None:
    alice, bob = meet(), meet()
    room = create_room(alice.page, site, "live")
    register(alice.page, "alice")
    bob.page.goto(room)
    register(bob.page, "bob")
    expect(alice.page.locator("#online li")).to_have_text(["alice", "bob"])
    say(alice.page, "hi @bob, Shift+Enter works too")
    expect(log(bob.page).locator("li .text")).to_have_text(["hi @bob, Shift+Enter works too"])
    expect(log(bob.page).locator("mark.mention-me")).to_have_text("@bob")
    box = bob.page.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    box.press("Enter")
    expect(log(alice.page).locator("li .text").last).to_have_text("first line\nsecond line")
    bob.page.get_by_role("button", name="Log out").click()
    expect(bob.page.get_by_role("button", name="Log in")).to_be_visible()
    # Logging out ends presence at once (no grace period: no reconnect is coming).
    expect(alice.page.locator("#online li")).to_have_text(["alice"], timeout=3000)
    assert alice.errors == [] and bob.errors == []


def test_offline_and_back_shows_everything_once_and_delivers_what_was_typed(
    site: str, meet: Callable[..., Person]
) -> None:
    alice, bob = meet(), meet()
    room = create_room(alice.page, site, "flaky")
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    register(alice.page, "alice")
    bob.page.goto(room)
    register(bob.page, "bob")
    expect(bob.page.get_by_role("status")).to_have_text("Live")

    bob.context.set_offline(True)
    bob.page.evaluate("window.dispatchEvent(new Event('offline'))")
    say(bob.page, "typed while offline")
    expect(log(bob.page).locator("li.pending .text")).to_have_text(["typed while offline"])
    for n in range(3):
        say(alice.page, f"while bob was away {n}")
    expect(log(alice.page).locator("li:not(.pending) .text")).to_have_count(3)

    bob.context.set_offline(False)
    bob.page.evaluate("window.dispatchEvent(new Event('online'))")
    expected = [*(f"while bob was away {n}" for n in range(3)), "typed while offline"]
    expect(log(bob.page).locator("li:not(.pending) .text")).to_have_text(expected, timeout=15000)
    expect(log(alice.page).locator("li:not(.pending) .text")).to_have_text(expected, timeout=15000)
    expect(log(bob.page).locator("li.pending")).to_have_count(0)
    lines = api(site, f"{roomid}/get_conversation")
    assert [line.split("> ", 1)[1] for line in lines] == expected  # stored exactly once


def test_markup_is_shown_as_text_and_never_runs(site: str, meet: Callable[..., Person]) -> None:
    mallory = meet()
    page = mallory.page
    room = create_room(page, site, XSS)
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    expect(page).to_have_title(f"{XSS} · flaskchat")
    register(page, XSS, again=PASSWORD)  # the server refuses such a name; the page says so
    expect(page.get_by_role("alert")).to_have_text(re.compile("only letters, digits"))
    assert refused(site, f"{roomid}/register", {"username": XSS, "password": PASSWORD}) == 400
    register(page, "alice")
    say(page, f"{XSS} @alice")
    expect(log(page).locator("li .text")).to_have_text([f"{XSS} @alice"])
    api(site, f"{roomid}/register", {"username": "bob", "password": PASSWORD})
    expect(page.get_by_role("heading", level=1)).to_have_text(XSS)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img, main script, h1 script, #notice *").count() == 0
    page.goto(site)
    expect(page.get_by_role("link", name=XSS)).to_be_visible()
    assert page.evaluate("window.__xss") is None
    assert mallory.errors == []


def test_pages_send_a_strict_policy_and_break_none_of_it(
    site: str, meet: Callable[..., Person]
) -> None:
    someone = meet()
    page = someone.page
    page.add_init_script(
        """window.__violations = [];
           document.addEventListener('securitypolicyviolation',
             (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));"""
    )
    roomid = api(site, "createroom", {"alias": "policy"})["roomid"]
    pages = [("", 200), (f"{roomid}/", 200), ("A" * 22 + "/", 404)]  # lobby, room, error
    for path, status in pages:
        response = page.goto(site + path)
        assert response is not None and response.status == status
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
        if status == 200:
            expect(page.get_by_role("heading", level=1)).to_be_visible()
        if path == f"{roomid}/":  # its script ran and its event stream is open
            expect(page.get_by_role("status")).to_have_text("Live")
        else:
            page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__violations") == [], path
    assert someone.errors == []

    # The policy is in force, and a breach would have been seen: inline script is blocked.
    page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.__inline = 1'; document.head.append(s); }"""
    )
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__inline") is None
    assert any("Content Security Policy" in e for e in someone.errors)


def test_everything_works_under_a_prefix(prefixed_site: str, meet: Callable[..., Person]) -> None:
    alice = meet()
    requests: list[str] = []
    alice.page.on("request", lambda request: requests.append(request.url))
    room = create_room(alice.page, prefixed_site, "mounted")
    assert room.startswith(prefixed_site)
    register(alice.page, "alice")
    say(alice.page, "under /chat")
    expect(log(alice.page).locator("li .text")).to_have_text(["under /chat"])
    expect(alice.page.get_by_role("status")).to_have_text("Live")
    assert requests and all(url.startswith(prefixed_site) for url in requests), requests
    assert alice.errors == []


def test_history_scrolls_back_and_times_are_local(site: str, meet: Callable[..., Person]) -> None:
    roomid = api(site, "createroom", {"alias": "long history"})["roomid"]
    api(site, f"{roomid}/register", {"username": "bot", "password": PASSWORD})
    token = api(site, f"{roomid}/login", {"username": "bot", "password": PASSWORD})["token"]
    for n in range(60):
        api(site, f"{roomid}/message", {"username": "bot", "token": token, "message": f"n{n}"})
    reader = meet(timezone_id="Asia/Tokyo")
    reader.page.goto(f"{site}{roomid}/")
    expect(log(reader.page).locator("li .text")).to_have_count(50)
    reader.page.get_by_role("button", name="Load older messages").click()
    expect(log(reader.page).locator("li .text")).to_have_count(60)
    assert texts(reader.page) == [f"n{n}" for n in range(60)]
    expect(reader.page.get_by_role("button", name="Load older messages")).to_be_hidden()
    stamp = reader.page.locator("#messages time").first
    iso = stamp.get_attribute("datetime")
    shown = stamp.text_content()
    expected = reader.page.evaluate(
        """iso => new Intl.DateTimeFormat(undefined, {
             hour: '2-digit', minute: '2-digit', timeZone: 'Asia/Tokyo',
           }).format(new Date(iso))""",
        iso,
    )
    assert shown == expected


def set_hidden(page: Page, hidden: bool) -> None:
    """Make the page believe its tab was switched away (or back)."""
    page.evaluate(
        """hidden => {
             Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
             document.dispatchEvent(new Event('visibilitychange'));
           }""",
        hidden,
    )


def test_unread_count_in_the_title_while_hidden(site: str, meet: Callable[..., Person]) -> None:
    alice, bob = meet(), meet()
    room = create_room(alice.page, site, "title")
    register(alice.page, "alice")
    bob.page.goto(room)
    register(bob.page, "bob")
    set_hidden(bob.page, True)
    say(alice.page, "one")
    say(alice.page, "two")
    expect(bob.page).to_have_title("(2) title · flaskchat")
    set_hidden(bob.page, False)
    expect(bob.page).to_have_title("title · flaskchat")


def test_a_phone_sized_screen(site: str, meet: Callable[..., Person]) -> None:
    phone = meet(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = phone.page
    create_room(page, site, "A room with a rather long name to wrap on a small phone")
    register(page, "alice")
    page.get_by_label("Message", exact=True).fill("a-very-long-word-" * 12)
    page.get_by_role("button", name="Send").tap()  # on a touch screen Enter adds a line
    expect(log(page).locator("li:not(.pending) .text")).to_have_count(1)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways ({width}px)"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "room-360px.png"), full_page=True)
    assert phone.errors == []


def test_two_people_chat_through_gunicorn(gunicorn_site: str, meet: Callable[..., Person]) -> None:
    alice, bob = meet(), meet()
    room = create_room(alice.page, gunicorn_site, "production")
    register(alice.page, "alice")
    bob.page.goto(room)
    register(bob.page, "bob")
    for n in range(6):  # two workers: posts and streams land on either
        sender = (alice, bob)[n % 2].page
        say(sender, f"m{n}")
        # The server orders messages as they arrive: let each land before the next.
        expect(log(sender).locator("li.pending")).to_have_count(0)
    expected = [f"m{n}" for n in range(6)]
    expect(log(alice.page).locator("li:not(.pending) .text")).to_have_text(expected)
    expect(log(bob.page).locator("li:not(.pending) .text")).to_have_text(expected)
    alice.page.reload()
    expect(log(alice.page).locator("li .text")).to_have_text(expected)
    assert alice.errors == [] and bob.errors == []
