"""Right-to-left names and bidi controls in a real Chromium: every user string
(the room's alias, a username, a message) is a bidi isolate, so a right-to-left
name or a stray U+202E in a message cannot reorder the rest of its line."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ARTIFACTS, Person
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
ARABIC_NAME = "محمّد"  # a shadda on a letter: a combining mark the rules allow
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE, with no closing U+202C
# Every element that holds a user string.
USER_STRINGS = "#room-alias, #me, #messages .name, #messages .text, #online .name"


def create_room(base: str, alias: str) -> str:
    request = urllib.request.Request(
        base + "createroom",
        data=json.dumps({"alias": alias}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return f"{base}{json.loads(response.read())['roomid']}/"


def register(page: Page, username: str) -> None:
    page.get_by_label("Choose a username").fill(username)
    page.get_by_label("Choose a password").fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_text("Logged in as")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Live")


def say(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, selector
    return dict(found)


def isolation(page: Page) -> list[dict[str, Any]]:
    """For each element holding a user string: its text, computed unicode-bidi and dir."""
    result: list[dict[str, Any]] = page.eval_on_selector_all(
        USER_STRINGS,
        """elements => elements.map(e => ({
            text: e.textContent, bidi: getComputedStyle(e).unicodeBidi, dir: e.dir}))""",
    )
    return result


def test_user_strings_are_isolated_and_keep_the_line_in_order(
    site: str, meet: Callable[..., Person]
) -> None:
    someone = meet()
    page = someone.page
    page.goto(create_room(site, f"{RLO}evil room"))
    register(page, ARABIC_NAME)
    say(page, f"{RLO}hello")
    messages = page.get_by_role("log").locator("li:not(.pending)")
    expect(messages).to_have_count(1)
    expect(page.locator("#messages li.pending")).to_have_count(0)
    expect(page.locator("#online li")).to_have_text([ARABIC_NAME])

    # Left to right, as in the seed's line: the time, then <name>, then the text.
    # Unisolated, the override and the right-to-left name would run together and
    # the text would be drawn before (left of) the name.
    line = "#messages li:not(.pending)"
    when, author, text = (box(page, f"{line} {part}") for part in ("time", ".author", ".text"))
    assert when["x"] + when["width"] <= author["x"] + 1
    assert author["x"] + author["width"] <= text["x"] + 1

    held = isolation(page)
    assert {entry["text"] for entry in held} == {
        f"{RLO}evil room",
        ARABIC_NAME,
        f"{RLO}hello",
    }
    assert len(held) == 5
    for entry in held:
        assert (entry["bidi"], entry["dir"]) == ("isolate", "auto"), entry

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "room-bidi.png"))
    assert someone.errors == []
