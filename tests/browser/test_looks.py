"""How the pages look and read: an empty room that says how to join, the Register
form on a phone's first screen, a centred home card, a dark theme, and names in
stable colours readable in both themes. Screenshots of each go to test-artifacts/."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ARTIFACTS, Person
from playwright.sync_api import Page, expect
from test_room_page import PASSWORD, api, create_room, log, register, say

pytestmark = pytest.mark.browser

PHONE: dict[str, Any] = {
    "viewport": {"width": 360, "height": 740},
    "is_mobile": True,
    "has_touch": True,
}
SIZES = [(1280, 800), (360, 740)]
EMPTY = "No messages yet."
NAMES = [
    "alice", "Bob", "carol", "dave", "Eve", "frank",
    "grace", "heidi", "ivan", "judy", "mallory", "Ольга",
]  # fmt: skip


def new_room(base: str, alias: str) -> str:
    return f"{base}{api(base, 'createroom', {'alias': alias})['roomid']}/"


def in_viewport(page: Page, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (selector, box)
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], (selector, box)


def test_an_empty_room_says_how_to_join_until_its_first_message(
    site: str, meet: Callable[..., Person]
) -> None:
    alice, bob = meet(), meet()
    room = create_room(alice.page, site, "quiet")
    bob.page.goto(room)
    for page in (alice.page, bob.page):
        expect(page.get_by_text(EMPTY)).to_have_text(
            "No messages yet. Register or log in to say the first one."
        )
    register(alice.page, "alice")
    expect(alice.page.get_by_text(EMPTY)).to_have_text("No messages yet. Say the first one.")
    say(alice.page, "first!")
    for page in (alice.page, bob.page):  # live, on a page that loaded the room empty
        expect(log(page).locator("li:not(.pending) .text")).to_have_text(["first!"])
        expect(page.get_by_text(EMPTY)).to_be_hidden()
    bob.page.reload()
    expect(log(bob.page).locator("li .text")).to_have_text(["first!"])
    expect(bob.page.get_by_text(EMPTY)).to_be_hidden()
    assert alice.errors == [] and bob.errors == []


@pytest.mark.parametrize("messages", [0, 30])
def test_a_phone_shows_register_on_the_first_screen_even_with_a_long_name(
    site: str, meet: Callable[..., Person], messages: int
) -> None:
    alias = ("A very long room name that goes on " * 3)[:80]
    room = new_room(site, alias)
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    if messages:
        api(site, f"{roomid}/register", {"username": "alice", "password": PASSWORD})
        token = api(site, f"{roomid}/login", {"username": "alice", "password": PASSWORD})["token"]
        for n in range(messages):
            body = {"username": "alice", "token": token, "message": f"line {n}"}
            api(site, f"{roomid}/message", body)
    invitee = meet(**PHONE)
    page = invitee.page
    page.goto(room)
    expect(page.get_by_role("status")).to_have_text("Live")
    expect(page.get_by_role("tab", name="Register")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("button", name="Register")).to_be_visible()
    expect(page.get_by_role("button", name="Log in")).to_be_hidden()
    for selector in ("#register-tab", "#register-username", "#register-form button[type=submit]"):
        in_viewport(page, selector)
    header = page.locator("header.site").bounding_box()
    assert header is not None and header["height"] <= 120, header
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"room-invitee-360x740-{messages}-messages.png"))

    # The other form is one tap (or arrow key) away; after a log-out, Log in comes first.
    page.get_by_role("tab", name="Log in").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_role("button", name="Register")).to_be_hidden()
    page.get_by_role("tab", name="Log in").press("ArrowLeft")
    expect(page.get_by_role("tab", name="Register")).to_be_focused()
    expect(page.get_by_role("button", name="Register")).to_be_visible()
    register(page, "bob")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("tab", name="Log in")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("button", name="Register")).to_be_hidden()
    assert invitee.errors == []


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_home_card_is_centred_with_no_band_under_its_button(
    site: str, meet: Callable[..., Person], width: int, height: int
) -> None:
    someone = meet(viewport={"width": width, "height": height})
    page = someone.page
    page.goto(site)
    card = page.locator(".card").first.bounding_box()
    button = page.get_by_role("button", name="Create room").bounding_box()
    assert card is not None and button is not None
    assert abs(card["x"] + card["width"] / 2 - width / 2) <= 3, card
    # Only the card's padding (1rem) and a flex gap may sit under the button.
    band = card["y"] + card["height"] - (button["y"] + button["height"])
    assert band <= 28, band
    assert someone.errors == []


def luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a CSS rgb()/rgba() or color(srgb ...) colour."""
    parts = [float(x) for x in re.findall(r"[\d.]+", colour)[:3]]
    if colour.startswith("color(srgb"):
        parts = [x * 255 for x in parts]

    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(x) for x in parts)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# Each element's text colour and the first opaque background behind it.
COLOURS = r"""(selector) => {
  const opaque = (colour) => {
    const alpha = colour.match(/(?:rgba\(.*,|\/)\s*([\d.]+)\)$/);
    return !alpha || Number(alpha[1]) === 1;
  };
  return [...document.querySelectorAll(selector)].map((element) => {
    let back = element;
    while (back && !opaque(getComputedStyle(back).backgroundColor)) back = back.parentElement;
    const background = back ? getComputedStyle(back).backgroundColor : "rgb(255, 255, 255)";
    return { text: element.textContent, colour: getComputedStyle(element).color, background };
  });
}"""


def colours(page: Page, selector: str) -> list[dict[str, str]]:
    result: list[dict[str, str]] = page.evaluate(COLOURS, selector)
    assert result, selector
    return result


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_names_have_stable_readable_colours_in_light_and_dark(
    site: str, meet: Callable[..., Person], scheme: str
) -> None:
    room = new_room(site, f"colours ({scheme})")
    roomid = room.rstrip("/").rsplit("/", 1)[1]
    for name in NAMES[1:]:
        api(site, f"{roomid}/register", {"username": name, "password": PASSWORD})
        token = api(site, f"{roomid}/login", {"username": name, "password": PASSWORD})["token"]
        api(
            site,
            f"{roomid}/message",
            {"username": name, "token": token, "message": f"hi, I am {name} @alice"},
        )

    viewer = meet(color_scheme=scheme, viewport={"width": 1280, "height": 800})
    page = viewer.page
    page.goto(site)
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(
            path=str(ARTIFACTS / f"lobby-{width}x{height}-{scheme}.png"), full_page=True
        )
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(room)
    register(page, NAMES[0])
    say(page, "hello everyone, I am alice")
    expect(log(page).locator("li:not(.pending)")).to_have_count(len(NAMES))

    background = luminance(
        page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    )
    assert (background < 0.1) if scheme == "dark" else (background > 0.8), background
    names = colours(page, "#messages li:not(.pending) .name")
    assert sorted(n["text"] for n in names) == sorted(NAMES)
    texts = colours(
        page, "#messages li:not(.pending) .text, #messages time, mark, .connection, #online-heading"
    )
    for item in names + texts:
        ratio = contrast(item["colour"], item["background"])
        assert ratio >= 4.5, f"{item} has a contrast of {ratio:.2f}"
    # Stable: a name has one colour wherever it appears; names differ among themselves.
    by_name = {n["text"]: n["colour"] for n in names}
    online = page.locator("#online .name").first
    expect(online).to_have_css("color", by_name[NAMES[0]])
    assert len(set(by_name.values())) >= 6, by_name

    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(ARTIFACTS / f"room-{width}x{height}-{scheme}.png"), full_page=True)
    assert viewer.errors == []  # no script error, no CSP violation
