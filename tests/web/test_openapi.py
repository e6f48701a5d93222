"""The published OpenAPI document, flaskchat/static/openapi.json: valid, complete,
and true of the running app.

Schemathesis sends a bounded number of generated requests (derandomized, so every
run sends the same ones) to every operation but the endless event stream, over
real HTTP, and checks each answer against the document: no 5xx, only documented
statuses, and bodies, content types and headers as documented. The answers that
generated requests cannot reach (a rate limit, a store that is down, a full room,
a body too large, a conditional GET, the stream itself) are then provoked one by
one and checked the same way; every status the document lists is provoked here,
so the document cannot promise what the server never says.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis import checks

import flaskchat
from flaskchat import RoomStore, create_app, rules
from flaskchat.store import PAGE_MAX

from support import EventStream, ServedApp, close_app, free_port

DOCUMENT_PATH = Path(flaskchat.__file__).parent / "static" / "openapi.json"
DOCUMENT: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
PASSWORD = "correct horse battery"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# The routes that answer with HTML or files rather than JSON.
PAGES = {"/", "/<roomid:roomid>", "/<roomid:roomid>/", "/static/<path:filename>"}
UNKNOWN_ROOM = "A" * 22
CHEAP_HASH = "scrypt:1024:8:1"


@dataclass
class Served:
    """One app on a real HTTP server, with a room where alice is logged in and
    whose owner key is known. Bob logs in through the API; carol's tokens are
    there to be logged out; dave is there to be banned and unbanned; erin is
    banned, with the token she held before."""

    app: Flask
    url: str
    roomid: str
    token: str
    owner_key: str
    banned_token: str

    @property
    def store(self) -> RoomStore:
        return self.app.extensions["flaskchat"]  # type: ignore[no-any-return]

    def carol_token(self) -> str:
        return self.store.login(self.roomid, "carol", PASSWORD)

    def new_message_id(self) -> str:
        """A message of alice's, there to be deleted."""
        return self.store.post_message(self.roomid, "alice", self.token, "to be deleted").id

    def spare(self) -> Served:
        """The same server with a room of its own, for what would change the room
        that the other requests share (its settings, its owner key, its being)."""
        room = self.store.new_room("spare")
        return dataclasses.replace(self, roomid=room.roomid, owner_key=room.owner_key)


def serve(path: Path, **config: Any) -> Iterator[Served]:
    app = create_app(
        {
            "TESTING": True,
            "STORE_URL": f"sqlite:///{path / 'chat.sqlite3'}",
            "PASSWORD_HASH_METHOD": CHEAP_HASH,
            "SSE_KEEPALIVE": 0.5,
            **config,
        }
    )
    store: RoomStore = app.extensions["flaskchat"]
    room = store.new_room("described")
    roomid, owner_key = room.roomid, room.owner_key
    for name in ("alice", "bob", "carol", "dave", "erin"):
        store.register(roomid, name, PASSWORD)
    token = store.login(roomid, "alice", PASSWORD)
    store.post_message(roomid, "alice", token, "something to read")
    banned_token = store.login(roomid, "erin", PASSWORD)
    store.ban(roomid, owner_key, "erin")
    try:
        with ServedApp(app) as served:
            yield Served(app, served.url, roomid, token, owner_key, banned_token)
    finally:
        close_app(app)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app as deployed, rate limits off so that generated requests all get through."""
    yield from serve(tmp_path_factory.mktemp("live"), RATELIMIT_ENABLED=False)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Every limit at one request, and no event stream allowed at all."""
    once = "1/hour"
    yield from serve(
        tmp_path_factory.mktemp("limited"),
        RATELIMIT_CREATEROOM=once,
        RATELIMIT_REGISTER=once,
        RATELIMIT_LOGIN=once,
        RATELIMIT_MESSAGE_IP=once,
        RATELIMIT_TICKET=once,
        RATELIMIT_OWNER_FAILURES=once,
        MAX_STREAMS_PER_IP=0,
    )


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A room with its five accounts is full."""
    yield from serve(
        tmp_path_factory.mktemp("crowded"), RATELIMIT_ENABLED=False, MAX_USERS_PER_ROOM=5
    )


@pytest.fixture(scope="module")
def down() -> Iterator[Served]:
    """An app whose store (a Redis where nothing listens) never answers."""
    app = create_app({"TESTING": True, "STORE_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        with ServedApp(app) as served:
            yield Served(app, served.url, UNKNOWN_ROOM, "no token", "no key", "no token")
    finally:
        close_app(app)


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method in item.keys() & METHODS
    }


def component(name: str) -> Draft202012Validator:
    """A validator for one of the document's schemas."""
    schema = {**DOCUMENT, "$ref": f"#/components/schemas/{name}"}
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# The document itself


def test_the_served_document_is_the_packaged_one_and_valid_openapi_3_1(live: Served) -> None:
    with urllib.request.urlopen(f"{live.url}/openapi.json", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        served = json.loads(response.read())
    assert served == DOCUMENT
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT, cls=OpenAPIV31SpecValidator)


def test_every_json_route_is_documented_and_nothing_else() -> None:
    app = create_app({"TESTING": True, "STORE_URL": "memory://"})
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in PAGES:
            continue
        path = rule.rule.replace("<roomid:roomid>", "{roomid}")
        routes |= {
            (method.lower(), path)
            for method in rule.methods or ()
            if method not in {"HEAD", "OPTIONS"}
        }
    close_app(app)
    assert routes == documented_operations()


def test_the_limits_in_the_document_are_the_rules() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    password = schemas["NewAccount"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (
        rules.PASSWORD_MIN,
        rules.PASSWORD_MAX,
    )
    assert schemas["NewMessage"]["properties"]["client_id"]["maxLength"] == rules.CLIENT_ID_MAX
    assert schemas["RoomCreated"]["properties"]["roomid"]["pattern"] == f"^{rules.ROOMID_PATTERN}$"
    [limit] = [
        p
        for p in DOCUMENT["paths"]["/{roomid}/messages"]["get"]["parameters"]
        if p.get("name") == "limit"
    ]
    assert limit["schema"]["maximum"] == PAGE_MAX
    retention = schemas["ChangeSettings"]["properties"]["retention_days"]
    assert (retention["minimum"], retention["maximum"]) == (1, rules.RETENTION_MAX_DAYS)
    descriptions = json.dumps(schemas)
    for number in (rules.ALIAS_MAX, rules.USERNAME_MAX, rules.MESSAGE_MAX):
        assert f"to {number} " in descriptions


# Generated requests

FUZZED = SCHEMA.exclude(path="/{roomid}/events")  # endless: provoked below instead
# Where a generated request goes: mostly the real room, sometimes wherever it says.
ROOMS = st.sampled_from(["real", "real", "real", "generated"])


# Owner requests that would change the room every case shares go to a spare one.
IN_A_SPARE_ROOM = {
    ("POST", "/{roomid}/settings"),
    ("POST", "/{roomid}/owner_key"),
    ("POST", "/{roomid}/delete_room"),
}


def as_someone(case: schemathesis.Case, live: Served) -> None:
    """Put a real login into a generated request that has the fields for one:
    alice's token, bob's password, a token of carol's to log out (so that alice
    stays logged in for the other cases), or the owner key, with dave as the
    member to ban and a fresh message of alice's as the one to delete."""
    operation = (case.operation.method.upper(), case.operation.path)
    if operation == ("GET", "/{roomid}/settings"):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {live.owner_key}"}
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("owner_key"), str):
        owner = live.spare() if operation in IN_A_SPARE_ROOM else live
        case.path_parameters["roomid"], body["owner_key"] = owner.roomid, owner.owner_key
        if isinstance(body.get("username"), str):
            body["username"] = "dave"
    elif case.operation.path == "/{roomid}/login":
        if isinstance(body.get("username"), str) and isinstance(body.get("password"), str):
            body["username"], body["password"] = "bob", PASSWORD
    elif isinstance(body.get("username"), str) and isinstance(body.get("token"), str):
        if case.operation.path == "/{roomid}/logout":
            body["username"], body["token"] = "carol", live.carol_token()
        else:
            body["username"], body["token"] = "alice", live.token
    if case.operation.path == "/{roomid}/delete_message" and isinstance(body.get("id"), str):
        body["id"] = live.new_message_id()


@FUZZED.parametrize()
@FUZZED.given(room=ROOMS, logged_in=st.booleans())
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
)
def test_generated_requests_are_answered_as_documented(
    case: schemathesis.Case, room: str, logged_in: bool, live: Served
) -> None:
    if "roomid" in (case.path_parameters or {}) and room == "real":
        case.path_parameters["roomid"] = live.roomid
        if logged_in:
            as_someone(case, live)
    # A request the document allows can still break a rule that a schema cannot say
    # (the characters of a username, control characters after stripping, `before`
    # with `after`): the document describes those, and the server answers 400.
    case.call_and_validate(base_url=live.url, excluded_checks=[checks.positive_data_acceptance])


# Provoked answers


@dataclass(frozen=True)
class Provoke:
    """A request that must get `status` from one of the servers above. `body` and
    `headers` may be functions of the server, for what only it knows."""

    method: str
    path: str
    status: int
    server: str = "live"
    room: str = "real"
    body: Any = None
    query: dict[str, str] | None = None
    headers: Any = None
    media_type: str | None = None
    # Send up to this many times; the answers before `status` must be documented too.
    attempts: int = 1

    @property
    def id(self) -> str:
        room = "" if self.room == "real" else f" in a {self.room} room"
        return f"{self.method.upper()} {self.path} {self.status}{room} ({self.server})"

    def case(self, served: Served) -> schemathesis.Case:
        """The request, as a Schemathesis case of the operation it is sent to."""
        parts: dict[str, Any] = {"query": self.query, "media_type": self.media_type}
        if self.room == "spare":
            served = served.spare()
        if "{roomid}" in self.path:
            rooms = {
                "real": served.roomid,
                "spare": served.roomid,
                "unknown": UNKNOWN_ROOM,
                "malformed": "not-a-room",
            }
            parts["path_parameters"] = {"roomid": rooms[self.room]}
        if self.body is not None:
            parts["body"] = self.body(served) if callable(self.body) else self.body
        if self.headers is not None:
            parts["headers"] = self.headers(served) if callable(self.headers) else self.headers
        return SCHEMA[self.path][self.method.upper()].Case(**parts)


_names = itertools.count()


def valid_body(path: str) -> Callable[[Served], dict[str, Any]]:
    """A body the endpoint accepts, made fresh for each request."""

    def make(served: Served) -> dict[str, Any]:
        match path:
            case "/createroom":
                return {"alias": "a room"}
            case "/{roomid}/register":
                return {"username": f"user{next(_names)}", "password": PASSWORD}
            case "/{roomid}/login":
                return {"username": "bob", "password": PASSWORD}
            case "/{roomid}/logout":
                return {"username": "carol", "token": served.carol_token()}
            case "/{roomid}/message":
                return {
                    "username": "alice",
                    "token": served.token,
                    "message": "hello",
                    "client_id": None,
                }
            case "/{roomid}/ticket":
                return {"username": "alice", "token": served.token}
            case "/{roomid}/delete_message":
                return {"id": served.new_message_id(), "owner_key": served.owner_key}
            case "/{roomid}/ban":
                return {"owner_key": served.owner_key, "username": "dave"}
            case "/{roomid}/unban":
                served.store.ban(served.roomid, served.owner_key, "dave")
                return {"owner_key": served.owner_key, "username": "dave"}
            case "/{roomid}/settings":
                return {
                    "owner_key": served.owner_key,
                    "registration": "open",
                    "retention_days": None,
                }
            case "/{roomid}/export" | "/{roomid}/owner_key" | "/{roomid}/delete_room":
                return {"owner_key": served.owner_key}
        raise AssertionError(path)

    return make


def too_large(path: str) -> Callable[[Served], dict[str, Any]]:
    return lambda served: {**valid_body(path)(served), "padding": "x" * 70_000}


NOT_LOGGED_IN = {"username": "alice", "token": "not a token", "message": "hello"}
# Erin was banned: her name and the token she held before are refused.
BANNED = {"username": "erin", "password": PASSWORD, "message": "hello"}
# Has what every owner endpoint requires, but not the key.
NOT_THE_OWNER = {"id": "1", "owner_key": "not the owner key", "username": "dave"}


def banned_body(served: Served) -> dict[str, str]:
    return {**BANNED, "token": served.banned_token}


def reused_client_id(served: Served) -> dict[str, Any]:
    """A client_id that alice already sent with another text."""
    served.store.post_message(served.roomid, "alice", served.token, "first", client_id="reused")
    return {"username": "alice", "token": served.token, "message": "second", "client_id": "reused"}


def as_the_owner(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.owner_key}"}


def previous_etag(path: str) -> Callable[[Served], dict[str, str]]:
    def headers(served: Served) -> dict[str, str]:
        url = served.url + path.replace("{roomid}", served.roomid)
        with urllib.request.urlopen(url, timeout=10) as response:
            return {"If-None-Match": response.headers["ETag"]}

    return headers


POSTS = [
    "/createroom",
    "/{roomid}/register",
    "/{roomid}/login",
    "/{roomid}/logout",
    "/{roomid}/message",
    "/{roomid}/ticket",
]
ROOM_GETS = ["/{roomid}/get_conversation", "/{roomid}/messages", "/{roomid}/events"]
OWNER_POSTS = [
    "/{roomid}/delete_message",
    "/{roomid}/ban",
    "/{roomid}/unban",
    "/{roomid}/settings",
    "/{roomid}/export",
    "/{roomid}/owner_key",
    "/{roomid}/delete_room",
]
# What a 200 from these would change for the other requests happens in a spare room.
SPARE = {"/{roomid}/settings", "/{roomid}/owner_key", "/{roomid}/delete_room"}
LIMITED = [
    "/createroom",
    "/{roomid}/register",
    "/{roomid}/login",
    "/{roomid}/message",
    "/{roomid}/ticket",
]

PROVOKED = [
    *(Provoke("post", path, 200, body=valid_body(path)) for path in POSTS),
    *(Provoke("post", path, 400, body={"unexpected": True}) for path in POSTS),
    *(Provoke("post", path, 404, room="unknown", body=valid_body(path)) for path in POSTS[1:]),
    *(Provoke("post", path, 413, body=too_large(path)) for path in POSTS),
    *(Provoke("post", path, 415, body="hello", media_type="text/plain") for path in POSTS),
    *(Provoke("post", path, 429, "limited", body=valid_body(path), attempts=3) for path in LIMITED),
    *(Provoke("post", path, 503, "down", body={"alias": "a", **NOT_LOGGED_IN}) for path in POSTS),
    Provoke("post", "/{roomid}/register", 403, "crowded", body=valid_body("/{roomid}/register")),
    Provoke("post", "/{roomid}/register", 409, body={"username": "ALICE", "password": PASSWORD}),
    Provoke("post", "/{roomid}/message", 409, body=reused_client_id),
    Provoke(
        "post", "/{roomid}/login", 401, body={"username": "alice", "password": "wrong password"}
    ),
    *(Provoke("post", path, 401, body=NOT_LOGGED_IN) for path in POSTS[3:]),
    Provoke("get", "/healthz", 200),
    Provoke("get", "/healthz", 503, "down"),
    Provoke("get", "/openapi.json", 200),
    Provoke("get", "/openapi.json", 304, headers=previous_etag("/openapi.json")),
    Provoke("get", "/{roomid}/get_conversation", 200),
    Provoke(
        "get",
        "/{roomid}/get_conversation",
        304,
        headers=previous_etag("/{roomid}/get_conversation"),
    ),
    Provoke("get", "/{roomid}/messages", 200, query={"limit": "1"}),
    Provoke("get", "/{roomid}/messages", 400, query={"limit": "0"}),
    Provoke("get", "/{roomid}/events", 400, query={"after": "not an id"}),
    Provoke("get", "/{roomid}/events", 401, query={"ticket": "forged"}),
    Provoke("get", "/{roomid}/events", 429, "limited"),
    *(Provoke("get", path, 404, room="unknown") for path in ROOM_GETS),
    *(Provoke("get", path, 404, room="malformed") for path in ROOM_GETS),
    *(Provoke("post", path, 404, room="malformed", body=valid_body(path)) for path in POSTS[1:]),
    *(Provoke("get", path, 503, "down") for path in ROOM_GETS),
    # Banned names
    Provoke("post", "/{roomid}/login", 403, body=BANNED),
    *(Provoke("post", path, 403, body=banned_body) for path in POSTS[3:]),
    # Owners
    *(
        Provoke("post", path, 200, room="spare" if path in SPARE else "real", body=valid_body(path))
        for path in OWNER_POSTS
    ),
    Provoke(
        "post",
        "/{roomid}/export",
        200,
        body=lambda s: {**valid_body("/{roomid}/export")(s), "format": "text"},
    ),
    *(Provoke("post", path, 400, body={"unexpected": True}) for path in OWNER_POSTS),
    Provoke(
        "post",
        "/{roomid}/settings",
        400,
        body=lambda s: {"owner_key": s.owner_key, "retention_days": 0},
    ),
    Provoke(
        "post", "/{roomid}/export", 400, body=lambda s: {"owner_key": s.owner_key, "format": "xml"}
    ),
    Provoke("post", "/{roomid}/delete_message", 400, body=lambda s: {"id": "1"}),
    *(Provoke("post", path, 401, body=NOT_THE_OWNER) for path in OWNER_POSTS),
    Provoke("post", "/{roomid}/delete_message", 401, body=NOT_LOGGED_IN | {"id": "1"}),
    Provoke(
        "post",
        "/{roomid}/delete_message",
        200,
        body=lambda s: {"id": s.new_message_id(), "username": "alice", "token": s.token},
    ),
    Provoke(
        "post",
        "/{roomid}/delete_message",
        403,
        body=lambda s: {
            "id": s.new_message_id(),
            "username": "bob",
            "token": s.store.login(s.roomid, "bob", PASSWORD),
        },
    ),
    Provoke(
        "post",
        "/{roomid}/delete_message",
        404,
        body=lambda s: {"id": "999999", "owner_key": s.owner_key},
    ),
    Provoke(
        "post",
        "/{roomid}/ban",
        404,
        body=lambda s: {"owner_key": s.owner_key, "username": "nobody"},
    ),
    Provoke(
        "post",
        "/{roomid}/unban",
        404,
        body=lambda s: {"owner_key": s.owner_key, "username": "carol"},
    ),
    *(Provoke("post", path, 404, room="unknown", body=valid_body(path)) for path in OWNER_POSTS),
    *(Provoke("post", path, 404, room="malformed", body=NOT_THE_OWNER) for path in OWNER_POSTS),
    *(Provoke("post", path, 413, body=too_large(path)) for path in OWNER_POSTS),
    *(Provoke("post", path, 415, body="hello", media_type="text/plain") for path in OWNER_POSTS),
    *(
        Provoke("post", path, 429, "limited", body=NOT_THE_OWNER, attempts=3)
        for path in OWNER_POSTS
    ),
    *(Provoke("post", path, 503, "down", body=NOT_THE_OWNER) for path in OWNER_POSTS),
    Provoke("get", "/{roomid}/settings", 200),
    Provoke("get", "/{roomid}/settings", 200, headers=as_the_owner),
    Provoke("get", "/{roomid}/settings", 401, headers={"Authorization": "Bearer not the key"}),
    Provoke("get", "/{roomid}/settings", 404, room="unknown", headers=as_the_owner),
    Provoke("get", "/{roomid}/settings", 404, room="malformed"),
    Provoke(
        "get",
        "/{roomid}/settings",
        429,
        "limited",
        headers={"Authorization": "Bearer not the key"},
        attempts=3,
    ),
    Provoke("get", "/{roomid}/settings", 503, "down"),
]


@pytest.mark.parametrize("provoke", PROVOKED, ids=lambda p: p.id)
def test_provoked_answers_are_as_documented(
    provoke: Provoke, request: pytest.FixtureRequest
) -> None:
    served: Served = request.getfixturevalue(provoke.server)
    statuses = []
    for _ in range(provoke.attempts):
        case = provoke.case(served)
        response = case.call(base_url=served.url)
        statuses.append(response.status_code)
        # A 503 is what a store that is down must give: documented, so not a failure.
        unavailable = response.status_code == 503 and provoke.status == 503
        case.validate_response(
            response, excluded_checks=[checks.not_a_server_error] if unavailable else None
        )
        if response.status_code == provoke.status:
            break
    assert statuses[-1] == provoke.status, statuses


def test_an_event_stream_is_as_documented(live: Served) -> None:
    responses = DOCUMENT["paths"]["/{roomid}/events"]["get"]["responses"]
    [media_type] = responses["200"]["content"]
    first = live.store.messages(live.roomid, limit=1).messages[0].id
    with EventStream(live.url, f"/{live.roomid}/events?after={first}") as stream:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type", "").startswith(media_type)
        presence = stream.next_event()
        assert presence.event == "presence"
        component("Presence").validate(presence.data)
        live.store.post_message(live.roomid, "alice", live.token, "streamed")
        message = stream.next_of("message")
        ticket = live.store.issue_ticket(live.roomid, "alice", live.token)
        with EventStream(live.url, f"/{live.roomid}/events?ticket={ticket}"):
            change = stream.next_of("presence-change")
    component("Message").validate(message.data)
    assert message.id == message.data["id"]
    component("PresenceChange").validate(change.data)
    assert change.data == {"joined": ["alice"], "left": []}


def test_moderation_on_an_event_stream_is_as_documented(live: Served) -> None:
    room = live.spare()
    room.store.register(room.roomid, "frank", PASSWORD)
    token = room.store.login(room.roomid, "frank", PASSWORD)
    posted = room.store.post_message(room.roomid, "frank", token, "soon gone")
    with EventStream(live.url, f"/{room.roomid}/events?after={posted.id}") as stream:
        assert stream.next_event().event == "presence"
        room.store.delete_message(room.roomid, posted.id, owner_key=room.owner_key)
        deleted = stream.next_of("delete")
        room.store.ban(room.roomid, room.owner_key, "FRANK")
        banned = stream.next_of("ban")
        room.store.unban(room.roomid, room.owner_key, "frank")
        unbanned = stream.next_of("unban")
        room.store.delete_room(room.roomid, room.owner_key)
        gone = stream.next_of("gone")
        with pytest.raises(EOFError):  # the stream ends after `gone`
            stream.next_event()
    component("Deleted").validate(deleted.data)
    assert deleted.data == {"id": posted.id}
    for event in (banned, unbanned):
        component("MemberChange").validate(event.data)
        assert event.data == {"username": "frank"}
    assert gone.data == {}


def test_every_documented_answer_is_provoked() -> None:
    provoked = {(p.method, p.path, str(p.status)) for p in PROVOKED}
    provoked.add(("get", "/{roomid}/events", "200"))  # the stream, read by the test above
    documented = {
        (method, path, status)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in METHODS
        for status in operation["responses"]
    }
    assert provoked == documented
