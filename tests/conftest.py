"""Fixtures that describe the world: an app on a real SQLite file, its store, and
a helper that performs the actions most tests repeat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flaskchat import RoomStore, create_app

from actions import ChatActions


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "STORE_URL": f"sqlite:///{tmp_path / 'chat.sqlite3'}"})
    yield app
    app.extensions["flaskchat"].close()


@pytest.fixture
def store(app: Flask) -> RoomStore:
    return app.extensions["flaskchat"]  # type: ignore[no-any-return]


@pytest.fixture
def chat(client: FlaskClient) -> ChatActions:
    return ChatActions(client)
