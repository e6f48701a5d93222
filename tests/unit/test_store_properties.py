"""Property tests: random sequences of operations against a simple model, on every
backend, and round trips of any Unicode text through the rules."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from flaskchat import (
    AuthenticationFailed,
    InvalidInput,
    RoomStore,
    UsernameTaken,
)
from flaskchat.rules import username_key

from support import backend_url

CHEAP_HASH = "scrypt:1024:8:1"
LINE = re.compile(r"^\d\d-\d\d-\d\d \d\d:\d\d:\d\d <([^>]*)> (.*)$", re.S)

# Text from every corner that the rules care about: letters of many scripts,
# combining marks, spaces, controls, surrogates and astral characters.
ANY_TEXT = st.text(
    alphabet=st.characters(codec=None, categories=None),
    max_size=40,
)
NAMES = st.sampled_from(["alice", "Alice", "ALICE", "bob", "Zoë", "ｂｏｂ", "bad name", ""])
MESSAGES = st.one_of(
    st.sampled_from(["hi", "  padded  ", "", "\n", "line\nbreak", "bell\x07", "@alice <b>x</b>"]),
    ANY_TEXT,
)
ALIASES = st.one_of(st.sampled_from(["room", " spaced ", "", "x" * 81]), ANY_TEXT)
PASSWORDS = st.sampled_from(["correct horse", "battery staple", "short"])


class StoreModel(RuleBasedStateMachine):
    """Drives a `RoomStore` and a plain-dict model side by side; after every step
    the store's snapshot must equal what the model predicts."""

    rooms = Bundle("rooms")
    sessions = Bundle("sessions")

    def __init__(self, url: str) -> None:
        super().__init__()
        self.store = RoomStore.from_url(url, hash_method=CHEAP_HASH)
        # roomid -> {"alias", "users": {key: (name, password)}, "messages": [(name, text)]}
        self.model: dict[str, dict[str, Any]] = {}
        self.client_ids: dict[tuple[str, str, str], str] = {}

    def teardown(self) -> None:
        self.store.close()

    @initialize(target=rooms)
    def first_room(self) -> str:
        return self._create("first")

    def _create(self, alias: str) -> str:
        roomid = self.store.create_room(alias)
        self.model[roomid] = {"alias": alias.strip(), "users": {}, "messages": []}
        return roomid

    @rule(
        target=rooms, alias=st.one_of(st.sampled_from(["room", " spaced ", "", "x" * 81]), ANY_TEXT)
    )
    def create_room(self, alias: str) -> str:
        """A valid alias makes a room; anything else changes nothing."""
        try:
            return self._create(alias)
        except InvalidInput:
            return next(iter(self.model))

    @rule(roomid=rooms, name=NAMES, password=PASSWORDS)
    def register(self, roomid: str, name: str, password: str) -> None:
        """Names are unique per room without regard to case."""
        users = self.model[roomid]["users"]
        try:
            shown = self.store.register(roomid, name, password)
        except UsernameTaken:
            assert unicodedata.normalize("NFKC", name).strip().casefold() in users
            return
        except InvalidInput:
            assert len(password) < 8 or not re.fullmatch(r"[\w.-]+", name.strip() or "!")
            return
        key = shown.casefold()
        assert key not in users
        users[key] = (shown, password)

    @rule(target=sessions, roomid=rooms, name=st.sampled_from(["carol", "Dave", "ｅｖｅ"]))
    def join(self, roomid: str, name: str) -> tuple[str, str, str]:
        """Register if need be, then log in: the usual way into a room."""
        self.register(roomid, name, "correct horse")
        return self.login(roomid, name, "correct horse")

    @rule(target=sessions, roomid=rooms, name=NAMES, password=PASSWORDS)
    def login(self, roomid: str, name: str, password: str) -> tuple[str, str, str]:
        """Right password: a token. Anything else: the same refusal."""
        key = unicodedata.normalize("NFKC", name).strip().casefold()
        known = self.model[roomid]["users"].get(key)
        try:
            token = self.store.login(roomid, name, password)
        except AuthenticationFailed:
            assert known is None or known[1] != password
            return (roomid, name, "not-a-token")
        assert known is not None and known[1] == password
        return (roomid, name, token)

    @rule(session=sessions, text=MESSAGES, client_id=st.sampled_from([None, "c1", "c2"]))
    def post(self, session: tuple[str, str, str], text: str, client_id: str | None) -> None:
        """A valid token posts once per client_id; refusals store nothing."""
        roomid, name, token = session
        key = unicodedata.normalize("NFKC", name).strip().casefold()
        try:
            posted = self.store.post_message(roomid, name, token, text, client_id=client_id)
        except (AuthenticationFailed, InvalidInput):
            return
        shown = self.model[roomid]["users"][key][0]
        retry = None if client_id is None else self.client_ids.get((roomid, key, client_id))
        if retry is not None:
            assert posted.id == retry
            return
        assert posted.text == text.strip()
        self.model[roomid]["messages"].append((shown, text.strip()))
        if client_id is not None:
            self.client_ids[roomid, key, client_id] = posted.id

    @rule(session=consumes(sessions))
    def logout(self, session: tuple[str, str, str]) -> None:
        """A revoked token posts nothing afterwards."""
        roomid, name, token = session
        try:
            self.store.logout(roomid, name, token)
        except AuthenticationFailed:
            return
        with pytest.raises(AuthenticationFailed):
            self.store.post_message(roomid, name, token, "after logout")

    @rule(roomid=rooms, limit=st.integers(1, 7))
    def page_backwards(self, roomid: str, limit: int) -> None:
        """Paging back from the newest visits every message once, in order."""
        texts: list[str] = []
        page = self.store.messages(roomid, limit=limit)
        texts[:0] = [m.text for m in page.messages]
        while page.more:
            page = self.store.messages(roomid, before=page.messages[0].id, limit=limit)
            texts[:0] = [m.text for m in page.messages]
        assert texts == [text for _, text in self.model[roomid]["messages"]]

    @invariant()
    def snapshot_matches_the_model(self) -> None:
        snapshot = self.store.snapshot()
        assert set(snapshot) == set(self.model)
        for roomid, room in self.model.items():
            stored = snapshot[roomid]
            assert stored["alias"] == room["alias"]
            assert set(stored["users"]) == {shown for shown, _ in room["users"].values()}
            lines = [LINE.match(line) for line in stored["messages"]]
            assert [(m[1], m[2]) for m in lines if m] == room["messages"]
            assert all(lines)
            last = self.store.conversation(roomid)
            assert last == stored["messages"][-50:]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_random_operations_agree_with_the_model(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    redis = request.getfixturevalue("redis_server") if kind == "redis" else None

    def machine() -> StoreModel:
        if redis is not None:
            redis.flush()
            return StoreModel(redis.redis_url)
        return StoreModel(backend_url(kind, request, tmp_path_factory.mktemp(kind)))

    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


ROUND_TRIP = settings(max_examples=120, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("round-trip") / "chat.sqlite3"
    store = RoomStore.from_url(f"sqlite:///{path}", hash_method=CHEAP_HASH)
    roomid = store.create_room("round trips")
    store.register(roomid, "writer", "a long password")
    token = store.login(roomid, "writer", "a long password")
    yield store, roomid, token
    store.close()


@ROUND_TRIP
@given(alias=ANY_TEXT)
def test_any_alias_is_kept_as_typed_or_refused(sqlite_store: Any, alias: str) -> None:
    store = sqlite_store[0]
    before = set(store.snapshot())
    try:
        roomid = store.create_room(alias)
    except InvalidInput:
        assert set(store.snapshot()) == before
        return
    assert store.alias(roomid) == alias.strip()
    assert RoomStore.from_url(f"sqlite:///{store.backend.path}").alias(roomid) == alias.strip()


@ROUND_TRIP
@given(name=ANY_TEXT)
def test_any_username_is_normalised_or_refused(sqlite_store: Any, name: str) -> None:
    store, roomid, _ = sqlite_store
    try:
        normalised = unicodedata.normalize("NFKC", name).strip()
    except UnicodeError:
        normalised = ""
    allowed = re.fullmatch(r"[\w.-]{1,32}", normalised) is not None
    try:
        shown = store.register(roomid, name, "a long password")
    except UsernameTaken:
        assert allowed
        return
    except InvalidInput:
        assert not allowed
        return
    assert allowed and shown == normalised
    variant = shown.swapcase()
    try:
        same_account = username_key(variant) == username_key(shown)
    except InvalidInput:
        same_account = False
    assert store.login(roomid, variant if same_account else shown, "a long password")


@ROUND_TRIP
@given(text=MESSAGES)
def test_any_message_comes_back_exactly_or_is_refused(sqlite_store: Any, text: str) -> None:
    store, roomid, token = sqlite_store
    before = store.conversation(roomid)
    try:
        posted = store.post_message(roomid, "writer", token, text)
    except InvalidInput:
        assert store.conversation(roomid) == before
        return
    assume(posted.text)
    assert posted.text == text.strip()
    last = store.messages(roomid, limit=1).messages[0]
    assert (last.id, last.text) == (posted.id, text.strip())
    match = LINE.match(store.conversation(roomid)[-1])
    assert match is not None and match[1] == "writer" and match[2] == text.strip()
