"""A real headless Chromium (Debian's, driven by Playwright) against the app served
on 127.0.0.1: at the root, under a /chat prefix, or by real gunicorn."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import flaskchat.presence
from flaskchat import create_app

from support import ServedApp, close_app, gunicorn_service, require_executable

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    executable = require_executable("chromium", CHROMIUM)
    return {
        **browser_type_launch_args,
        "executable_path": executable,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@pytest.fixture
def chat_app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(
        {
            "TESTING": True,
            "STORE_URL": f"sqlite:///{tmp_path / 'chat.sqlite3'}",
            "PASSWORD_HASH_METHOD": "scrypt:1024:8:1",
            "RATELIMIT_ENABLED": False,
            "SSE_KEEPALIVE": 1.0,
        }
    )
    yield app
    close_app(app)


@pytest.fixture
def site(chat_app: Flask) -> Iterator[str]:
    """The app at the root of a real HTTP server: its base URL, ending in /."""
    with ServedApp(chat_app) as served:
        yield served.url + "/"


@pytest.fixture
def prefixed_site(chat_app: Flask) -> Iterator[str]:
    """The same app mounted under /chat, with nothing but 404s outside it."""
    mounted = DispatcherMiddleware(NotFound(), {"/chat": chat_app})
    with ServedApp(mounted) as served:
        yield served.url + "/chat/"


@pytest.fixture(autouse=True)
def prompt_hang_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams served in this process look for a closed page twice a second (not
    every 2 s), so a test's server, which waits for them, stops at once."""
    monkeypatch.setattr(flaskchat.presence, "PRESENCE_CHECK", 0.5)


@pytest.fixture
def gunicorn_site(tmp_path: Path) -> Iterator[str]:
    """Real gunicorn, with the recommended settings and two gevent workers, on one
    SQLite file."""
    service = gunicorn_service(
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        tmp_path / "gunicorn.log",
        *("-c", "python:flaskchat.gunicorn_config", "--graceful-timeout", "3"),
        env={
            "FLASKCHAT_PASSWORD_HASH_METHOD": "scrypt:1024:8:1",
            # Streams notice a closed page at their next keep-alive: stop quickly.
            "FLASKCHAT_SSE_KEEPALIVE": "1",
        },
    ).start()
    yield service.url + "/"
    service.stop(signal.SIGINT)  # at once, not after its graceful timeout


# How Chromium logs a reply with an error status: the pages expect some (a refused
# name, a revoked token) and explain them, so these alone are not errors.
FAILED_RESOURCE = "Failed to load resource: the server responded with a status of"


class Person:
    """One browser context: a person with their own storage and connection.

    `errors` collects script errors and console errors, CSP violations among them.
    """

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith(FAILED_RESOURCE):
            self.errors.append(message.text)


@pytest.fixture
def meet(browser: Browser) -> Iterator[Callable[..., Person]]:
    """Make people on demand, each in a browser context of their own."""
    made: list[Person] = []

    def person(**context_options: Any) -> Person:
        made.append(Person(browser.new_context(**context_options)))
        return made[-1]

    yield person
    for someone in made:
        someone.context.close()
