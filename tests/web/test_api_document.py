"""The published OpenAPI document: valid, complete, and true of the running app,
as checked by Schemathesis with a bounded number of generated requests."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import checks

import flaskchat
from flaskchat import RoomStore, create_app

from support import ServedApp, close_app

DOCUMENT = Path(flaskchat.__file__).parent / "static" / "openapi.json"
PASSWORD = "correct horse battery"
PAGES = {"/", "/<roomid:roomid>/", "/static/<path:filename>"}

schema = schemathesis.openapi.from_path(str(DOCUMENT)).exclude(path="/{roomid}/events")


@dataclass
class LiveRoom:
    url: str
    roomid: str
    token: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRoom]:
    """The app on a real HTTP server, with a room where alice is logged in."""
    path = tmp_path_factory.mktemp("api") / "chat.sqlite3"
    app = create_app(
        {
            "TESTING": True,
            "STORE_URL": f"sqlite:///{path}",
            "PASSWORD_HASH_METHOD": "scrypt:1024:8:1",
            "RATELIMIT_ENABLED": False,
        }
    )
    store: RoomStore = app.extensions["flaskchat"]
    roomid = store.create_room("fuzzed")
    store.register(roomid, "alice", PASSWORD)
    token = store.login(roomid, "alice", PASSWORD)
    store.post_message(roomid, "alice", token, "something to read")
    with ServedApp(app) as served:
        yield LiveRoom(served.url, roomid, token)
    close_app(app)


def test_the_served_document_is_the_packaged_one_and_valid(live: LiveRoom) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{live.url}/openapi.json", timeout=10) as response:
        served = json.loads(response.read())
        assert response.headers["Content-Type"].startswith("application/json")
    packaged = json.loads(DOCUMENT.read_text())
    assert served == packaged
    validate(packaged)
    assert packaged["openapi"].startswith("3.1")


def test_every_json_route_is_documented_and_nothing_else() -> None:
    app = create_app({"TESTING": True, "STORE_URL": "memory://"})
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in PAGES:
            continue
        path = rule.rule.replace("<roomid:roomid>", "{roomid}")
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                routes.add((method.lower(), path))
    document = json.loads(DOCUMENT.read_text())
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == documented


_turns = itertools.count()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_app_answers_as_documented(case: schemathesis.Case, live: LiveRoom) -> None:
    """No 5xx, only documented statuses, and bodies and headers that match the
    document. Most cases target the real room, and half of those as alice."""
    turn = next(_turns)
    if case.path_parameters and "roomid" in case.path_parameters and turn % 4:
        case.path_parameters["roomid"] = live.roomid
        body = case.body if isinstance(case.body, dict) else {}
        as_alice = (
            turn % 2
            and isinstance(body.get("username"), str)
            and isinstance(body.get("token"), str)
            and case.operation.path != "/{roomid}/logout"  # keep alice's token alive
        )
        if as_alice:
            body["username"], body["token"] = "alice", live.token
    case.call_and_validate(
        base_url=live.url,
        excluded_checks=[checks.positive_data_acceptance],
    )
