"""Property tests of `RoomStore` with Hypothesis.

A state machine drives a store and a plain-Python model side by side with random
sequences of operations, on every backend, and compares them after every step.
Round-trip properties then feed any Unicode text through the rules of DESIGN.md
section 2. The expected outcomes are written here from the design, not taken from
`flaskchat.rules`, so a rule that drifted from the design would show.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flaskchat import (
    AuthenticationFailed,
    ClientIdReused,
    InvalidInput,
    LimitReached,
    RoomNotFound,
    RoomStore,
    StoreError,
    UsernameTaken,
)
from flaskchat.store import Message, Presence

from support import backend_url

BACKENDS = ["memory", "sqlite", "redis"]
# Real scrypt, cheap enough for hundreds of hashes per test.
CHEAP_HASH = "scrypt:1024:8:1"
PASSWORD = "correct horse"
# Small limits, so that a few random steps reach them; few rooms, so that each
# gets enough messages to page through.
MAX_ROOMS = 3
CONVERSATION_LIMIT = 2
MAX_USERS = 3
MAX_TOKENS = 2

ROOMID = re.compile(r"[A-Za-z0-9_-]{22}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# The seed's line: `14-07-12 13:22:30 <alice> hi`; a message may span lines.
LINE = re.compile(
    r"[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} <(?P<name>[^>]+)> (?P<text>.+)",
    re.DOTALL,
)


# What DESIGN.md section 2 says each value becomes (None: refused).


def is_text(value: str) -> bool:
    """Lone surrogates are not text: they cannot be stored as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_control(value: str, allowed: str = "") -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in allowed for c in value)


def expected_alias(alias: str) -> str | None:
    """Stripped, 1-80 characters, no control characters."""
    alias = alias.strip()
    if not is_text(alias) or not 1 <= len(alias) <= 80 or has_control(alias):
        return None
    return alias


# Letters and marks among Unicode's default-ignorable characters: they show nothing.
INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)


def expected_username(name: str) -> str | None:
    """NFKC-normalised and stripped, 1-32 letters, digits, '_', '-' or '.', where a
    letter may carry up to 4 visible combining marks. A name that logs in."""
    if not is_text(name):
        return None
    name = unicodedata.normalize("NFKC", name).strip()
    if not 1 <= len(name) <= 32:
        return None
    after_letter = 0  # how many more marks the character before may carry
    for c in name:
        if unicodedata.category(c) in ("Mn", "Mc") and not INVISIBLE.match(c):
            if after_letter == 0:
                return None
            after_letter -= 1
        elif c.isalnum() or c in "_-.":
            after_letter = 4 if c.isalpha() else 0
        else:
            return None
    return name


def script(char: str) -> str | None:
    """A character's script, from the first word of its Unicode name; None for
    those every script uses: 0-9, '_-.', other numbers, combining and modifier marks."""
    word = re.split("[ -]", unicodedata.name(char, ""))[0]
    if char in "_-." or unicodedata.category(char) in ("Nl", "No"):
        return None
    if word in ("DIGIT", "COMBINING", "MODIFIER"):
        return None
    return {"CJK": "HAN", "IDEOGRAPHIC": "HAN", "EXTENDED": "ARABIC"}.get(word, word)


def expected_new_username(name: str) -> str | None:
    """A name that logs in, shows nothing invisible, and is written in one script
    or in one of the mixes of Japanese, Chinese or Korean (Unicode TR39, "highly
    restrictive"). A name that registers (in a room with no look-alike of it)."""
    shown = expected_username(name)
    if shown is None or INVISIBLE.search(shown):
        return None
    scripts = {script(c) for c in shown} - {None}
    mixes = [{"LATIN", "HAN", "HIRAGANA", "KATAKANA"}, {"LATIN", "HAN", "BOPOMOFO"}]
    mixes.append({"LATIN", "HAN", "HANGUL"})
    return shown if len(scripts) <= 1 or any(scripts <= mix for mix in mixes) else None


def same_name(a: str, b: str) -> bool:
    """Names compare without regard to case (Unicode case folding)."""
    return a.casefold() == b.casefold()


def is_password(password: str) -> bool:
    return is_text(password) and 8 <= len(password) <= 1024


def expected_message(text: str) -> str | None:
    """Stripped, then 1-2000 characters; newlines and tabs allowed, other controls not."""
    text = text.strip()
    if not is_text(text) or not 1 <= len(text) <= 2000 or has_control(text, "\n\t"):
        return None
    return text


def is_client_id(client_id: str | None) -> bool:
    return client_id is None or (
        is_text(client_id) and 1 <= len(client_id) <= 64 and not has_control(client_id)
    )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def id_order(message_id: str) -> tuple[int, ...]:
    """Ids are opaque but increase within a room; memory and SQLite use decimal
    numbers, Redis its stream ids `<ms>-<seq>`."""
    return tuple(int(part) for part in message_id.split("-"))


def seed_line(message: Message) -> str:
    """The line the store must show for a message, in the default zone (UTC)."""
    stamp = message.posted_at.astimezone(UTC).strftime("%y-%m-%d %H:%M:%S")
    return f"{stamp} <{message.username}> {message.text}"


# Text from the corners the rules care about.

EDGE_CHARACTERS = (
    "\n\t\r\x00\x07\x1b\x7f\x85"  # controls: only newline and tab are allowed, in messages
    " \u00a0\u1680\u2003\u2028\u2029\u3000"  # spaces and separators that strip() removes
    "\u200b\u200d\u200e\u200f\u202e\u2066\ufeff"  # zero-width, joiners, direction marks
    "\u0301\u0308\u0345\u093f\u094d"  # combining marks
    "\ufb01\u2163\u2460\uff21\u00bd\ufdfa"  # compatibility forms that NFKC rewrites
    "\u0130\u0131\u00df\u1e9e\u03a3\u03c2"  # letters with unusual case mappings
    "\ud800\udbff\udc00\udfff"  # lone surrogates
    "\U0001f600\U0001f469\U0001d400\U00010000\U0010ffff"  # astral characters
    "<>&\"'_-."
)
CHARACTERS = st.one_of(
    st.characters(exclude_categories=()),  # anything, lone surrogates included
    st.characters(categories=("Cc", "Cs", "Zs", "Mn", "Cf")),
    st.characters(min_codepoint=0x10000),
    st.sampled_from(EDGE_CHARACTERS),
)
# `st.text` would merge the branches above into one range of code points, where
# the rare categories all but vanish; joining drawn characters keeps each branch.
ANY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=30),
    st.lists(CHARACTERS, max_size=30).map("".join),
)
PADDING = st.text(st.sampled_from(" \t\n\u00a0\u2003\u3000"), max_size=3)


def padded(core: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda before, text, after: before + text + after, PADDING, core, PADDING)


def at_bound(limit: int) -> st.SearchStrategy[str]:
    """One character repeated to one less, exactly, or one more than a rule's
    length limit (NFKC doubles "ﬁ"; "😀" is one astral code point)."""
    return padded(
        st.builds(
            lambda c, n: c * n,
            st.sampled_from(["x", "é", "😀", "ﬁ"]),
            st.sampled_from([limit - 1, limit, limit + 1]),
        )
    )


# Letters, digits, the allowed punctuation and combining marks, plus forms that NFKC
# rewrites into them.
NAME_CHARACTERS = st.one_of(
    st.characters(categories=("L", "N")),
    st.sampled_from("_-.ﬁ²Ⅻ①ＡＺａß\u0301\u0308\u093f\u094d\u0e34\u0651"),
)
ALIASES = st.one_of(ANY_TEXT, at_bound(80))
USERNAMES = st.one_of(
    ANY_TEXT,
    padded(st.lists(NAME_CHARACTERS, min_size=1, max_size=12).map("".join)),
    at_bound(32),
)
# Mostly printable text with line breaks and tabs, which messages may hold.
PROSE = st.lists(
    st.one_of(
        st.characters(categories=("L", "M", "N", "P", "S", "Zs", "Cf")),
        st.sampled_from("\n\t "),
    ),
    max_size=40,
).map("".join)
MESSAGES = st.one_of(ANY_TEXT, padded(PROSE), at_bound(2000))
CLIENT_ID_TEXT = st.one_of(ANY_TEXT, at_bound(64))


# The state machine and its model.


@dataclass
class UserModel:
    name: str  # as the room shows it
    password: str
    tokens: list[str] = field(default_factory=list)  # live ones, oldest first
    password_hash: str | None = None  # as first seen in storage


@dataclass
class RoomModel:
    alias: str
    users: dict[str, UserModel] = field(default_factory=dict)  # by case-folded name
    messages: list[Message] = field(default_factory=list)
    by_client_id: dict[tuple[str, str], Message] = field(default_factory=dict)


@dataclass(frozen=True)
class Session:
    """A token as a client holds it: with the room and the name it logged in as."""

    roomid: str
    name: str
    token: str


# Spellings of three names (NFKC and case variants of each), for visitors.
VISITORS = ["alice", "Alice", " ALICE\t", "ａｌｉｃｅ", "bob", "BOB", "straße", "STRASSE"]
# More names, valid and not, to fill rooms and to post under: a titlecase digraph
# that NFKC splits, Greek final sigma, spoofing tricks, a name one too long.
NAME_POOL = [
    *VISITORS,
    "ﬁona",
    "FIONA",
    "ǅemal",
    "DŽEMAL",
    "ΣΊΣΥΦΟΣ",
    "σίσυφος",
    "x.y-z_9",
    "bad name",
    "",
    "a" * 33,
    "<b>",
    "\u202eadmin",
    "i\u0307",
]
STATE_NAMES = st.sampled_from(NAME_POOL)
PASSWORDS = st.sampled_from(
    [PASSWORD, PASSWORD, "battery staple", "Correct Horse", "short", "x" * 1025, "\ud800" * 8]
)
STATE_ALIASES = st.one_of(
    st.sampled_from(["room", "  padded  ", "", " \t\n ", "x" * 80, "x" * 81, "bell\x07"]),
    ANY_TEXT,
)
VALID_MESSAGES = st.one_of(
    st.sampled_from(["hi", " padded\n", "two\nlines", "tab\there", "<b>&amp;</b>", "\u202eevil"]),
    st.text(st.characters(categories=("L", "M", "N", "P", "S", "Zs")), min_size=1, max_size=20),
)
STATE_MESSAGES = st.one_of(
    st.sampled_from(["", "\n\t", "bell\x07", "\r\n", "x" * 2001]), VALID_MESSAGES, ANY_TEXT
)
CLIENT_IDS = st.sampled_from([None, "c1", "c2", "retry 1", "", "x" * 65, "bad\x00id"])
UNKNOWN_ROOMIDS = st.one_of(
    st.text(st.sampled_from("abcXYZ019_-"), min_size=22, max_size=22), ANY_TEXT
)
# Arguments that `messages` refuses on every backend.
BAD_PAGES = st.sampled_from(
    [
        {"limit": 0},
        {"limit": 201},
        {"before": "1", "after": "1"},
        {"before": ""},
        {"before": "abc"},
        {"after": "1.5"},
        {"after": "-1"},
        {"before": "../1"},
    ]
)
# What the runs of the state machine must reach between them, or they prove little.
OUTCOMES = {
    "alias refused",
    "room created",
    "name refused",
    "name taken",
    "room full",
    "login refused",
    "oldest token dropped",
    "logged out",
    "posted",
    "posted under another spelling",
    "retry stored nothing",
    "reused client_id refused",
    "revoked token refused",
    "other name refused",
    "text refused",
    "conversation cut",
    "several pages",
}


class StoreMachine(RuleBasedStateMachine):
    """A `RoomStore` and a model of plain dataclasses, driven side by side.

    Each rule works out from the model what the store must answer (a value or a
    refusal), calls the store and compares; the invariants then compare all that
    the store holds with the model, so a refused call that changed anything shows.
    `seen` counts the outcomes reached.
    """

    rooms = Bundle("rooms")
    sessions = Bundle("sessions")

    def __init__(self, url: str, seen: Counter[str]) -> None:
        super().__init__()
        self.store = RoomStore.from_url(
            url,
            hash_method=CHEAP_HASH,
            conversation_limit=CONVERSATION_LIMIT,
            max_users_per_room=MAX_USERS,
            max_tokens_per_user=MAX_TOKENS,
        )
        self.seen = seen
        self.model: dict[str, RoomModel] = {}
        self.issued: set[str] = set()
        self.login_refusals: set[str] = set()
        self.lobby = self._create("lobby")

    def teardown(self) -> None:
        self.store.close()

    def _user(self, roomid: str, name: str) -> UserModel | None:
        shown = expected_username(name)
        return None if shown is None else self.model[roomid].users.get(shown.casefold())

    def _refused(self, expected: set[type[StoreError]], call: Callable[[], object]) -> StoreError:
        """The call must fail with one of the expected errors (several may apply)."""
        assert expected
        with pytest.raises(tuple(expected)) as refusal:
            call()
        return refusal.value

    def _create(self, alias: str) -> str:
        roomid = self.store.create_room(alias)
        assert ROOMID.fullmatch(roomid)
        assert roomid not in self.model
        self.model[roomid] = RoomModel(alias.strip())
        self.seen["room created"] += 1
        return roomid

    @initialize(target=rooms)
    def first_room(self) -> str:
        return self.lobby

    @initialize(target=sessions)
    def opening(self) -> object:
        """Every run opens with a scene, checked like any step: alice logs in on more
        devices than she may keep, her name is taken, the room fills up, and posts
        come under other spellings, from a dropped token, as a retry, with a bad
        text and under someone else's name."""
        alice = [self.join(self.lobby, name) for name in ["alice", "Alice", "ALICE"]]
        bob = self.join(self.lobby, "bob")
        for name in ["ALICE", "straße", "ﬁona"]:
            self.register(self.lobby, name, PASSWORD)
        self._post(alice[1], "ａｌｉｃｅ", "hi", None)
        self._post(alice[0], "alice", "from a dropped token", None)
        self._post(bob, "bob", "hello\n\tthere", "c1")
        self._post(bob, "BOB", "hello again", "c1")
        self._post(alice[2], "ALICE", "bell\x07", None)
        self._post(bob, "alice", "not mine", None)
        return multiple(*alice, bob)

    @precondition(lambda self: len(self.model) < MAX_ROOMS)
    @rule(target=rooms, alias=STATE_ALIASES)
    def create_room(self, alias: str) -> object:
        """A valid alias makes a new room whose alias is kept stripped."""
        if expected_alias(alias) is None:
            self._refused({InvalidInput}, lambda: self.store.create_room(alias))
            self.seen["alias refused"] += 1
            return multiple()
        return self._create(alias)

    @rule(roomid=rooms, name=STATE_NAMES, password=PASSWORDS)
    def register(self, roomid: str, name: str, password: str) -> None:
        """A valid name and password make an account shown as NFKC-normalised and
        stripped; a case variant of a taken name is refused, and so is any name
        once the room holds MAX_USERS accounts."""
        room = self.model[roomid]
        shown = expected_new_username(name)
        if shown is None or not is_password(password):
            self._refused({InvalidInput}, lambda: self.store.register(roomid, name, password))
            self.seen["name refused"] += shown is None
            return
        expected: set[type[StoreError]] = set()
        if len(room.users) >= MAX_USERS:
            expected.add(LimitReached)
        if shown.casefold() in room.users:
            expected.add(UsernameTaken)
        if expected:
            refusal = self._refused(expected, lambda: self.store.register(roomid, name, password))
            self.seen["name taken" if type(refusal) is UsernameTaken else "room full"] += 1
            return
        assert self.store.register(roomid, name, password) == shown
        room.users[shown.casefold()] = UserModel(shown, password)

    @rule(target=sessions, roomid=rooms, name=STATE_NAMES, password=PASSWORDS)
    def login(self, roomid: str, name: str, password: str) -> object:
        """The right password, under any spelling of the name, gives a new token (a
        user keeps the newest MAX_TOKENS); anything else gets one same refusal."""
        user = self._user(roomid, name)
        if user is None or user.password != password:
            refusal = self._refused(
                {AuthenticationFailed}, lambda: self.store.login(roomid, name, password)
            )
            self.login_refusals.add(refusal.explanation)
            self.seen["login refused"] += 1
            return multiple()
        return self._log_in(roomid, name, user)

    def _log_in(self, roomid: str, name: str, user: UserModel) -> Session:
        token = self.store.login(roomid, name, user.password)
        assert TOKEN.fullmatch(token)
        assert token not in self.issued
        self.issued.add(token)
        user.tokens.append(token)
        if len(user.tokens) > MAX_TOKENS:
            del user.tokens[0]
            self.seen["oldest token dropped"] += 1
        return Session(roomid, name, token)

    @rule(target=sessions, roomid=rooms, name=st.sampled_from(VISITORS))
    def join(self, roomid: str, name: str) -> object:
        """What a visitor does: register if the name is free, then log in."""
        if self._user(roomid, name) is None:
            self.register(roomid, name, PASSWORD)
        user = self._user(roomid, name)
        return multiple() if user is None else self._log_in(roomid, name, user)

    @rule(session=consumes(sessions))
    def logout(self, session: Session) -> None:
        """Logout revokes that one token; replaying it, to log out or to post, fails.
        (Tokens dropped for newer ones stay in `sessions` to be replayed there.)"""
        roomid, name, token = session.roomid, session.name, session.token
        user = self._user(roomid, name)
        assert user is not None
        if token in user.tokens:
            self.store.logout(roomid, name, token)
            user.tokens.remove(token)
            self.seen["logged out"] += 1
        replays = [
            lambda: self.store.logout(roomid, name, token),
            lambda: self.store.post_message(roomid, name, token, "still here?"),
        ]
        for replay in replays:
            self._refused({AuthenticationFailed}, replay)

    @rule(session=sessions, text=STATE_MESSAGES, client_id=CLIENT_IDS)
    def post_message(self, session: Session, text: str, client_id: str | None) -> None:
        """A live token posts a valid text as its user; a revoked one posts nothing;
        an invalid text or client_id is refused; a retried client_id returns the
        first copy and stores nothing, or is refused with another text."""
        self._post(session, session.name, text, client_id)

    @rule(
        session=sessions,
        name=st.sampled_from([*VISITORS, "ﬁona", "bad name", ""]),
        text=VALID_MESSAGES,
        client_id=st.sampled_from([None, "c1"]),
    )
    def post_message_as_anyone(
        self, session: Session, name: str, text: str, client_id: str | None
    ) -> None:
        """A token posts under any spelling of its user's name and under no other."""
        self._post(session, name, text, client_id)

    @rule(session=sessions, client_id=st.sampled_from(["c1", "c2", "retry 1"]))
    def retry_a_send(self, session: Session, client_id: str) -> None:
        """A client resends, padded, what it sent under `client_id` (if anything)."""
        user = self._user(session.roomid, session.name)
        key = ("" if user is None else user.name.casefold(), client_id)
        first = self.model[session.roomid].by_client_id.get(key)
        text = "hi" if first is None else f" {first.text}\n"
        self._post(session, session.name, text, client_id)

    def _post(self, session: Session, name: str, text: str, client_id: str | None) -> None:
        roomid, token = session.roomid, session.token
        room = self.model[roomid]
        owner = self._user(roomid, session.name)
        user = self._user(roomid, name)
        clean = expected_message(text)
        expected: set[type[StoreError]] = set()
        if user is not owner:
            expected.add(AuthenticationFailed)
            self.seen["other name refused"] += 1
        elif owner is None or token not in owner.tokens:
            expected.add(AuthenticationFailed)
            self.seen["revoked token refused"] += 1
        if clean is None or not is_client_id(client_id):
            expected.add(InvalidInput)
            self.seen["text refused"] += len(expected) == 1
        if expected:
            self._refused(
                expected, lambda: self.store.post_message(roomid, name, token, text, client_id)
            )
            return
        assert user is not None
        retry_key = (user.name.casefold(), client_id or "")
        first = room.by_client_id.get(retry_key) if client_id is not None else None
        if first is not None and first.text != clean:
            self._refused(
                {ClientIdReused},
                lambda: self.store.post_message(roomid, name, token, text, client_id),
            )
            self.seen["reused client_id refused"] += 1
            return
        started = datetime.now(UTC)
        posted = self.store.post_message(roomid, name, token, text, client_id)
        if client_id is not None and retry_key in room.by_client_id:
            assert posted == room.by_client_id[retry_key]
            self.seen["retry stored nothing"] += 1
            return
        assert (posted.username, posted.text) == (user.name, clean)
        assert started <= posted.posted_at <= datetime.now(UTC)
        assert posted.line == seed_line(posted)
        if room.messages:  # ids increase, and times never go back along them
            assert id_order(posted.id) > id_order(room.messages[-1].id)
            assert posted.posted_at >= room.messages[-1].posted_at
        room.messages.append(posted)
        if client_id is not None:
            room.by_client_id[retry_key] = posted
        self.seen["posted"] += 1
        self.seen["posted under another spelling"] += name != session.name

    @rule(roomid=rooms, name=STATE_NAMES, token=st.text(max_size=50))
    def post_with_a_forged_token(self, roomid: str, name: str, token: str) -> None:
        """A token the store never issued posts nothing."""
        self._refused(
            {AuthenticationFailed},
            lambda: self.store.post_message(roomid, name, token, "forged"),
        )

    @rule(
        roomid=UNKNOWN_ROOMIDS,
        call=st.sampled_from(
            [
                lambda store, roomid: store.alias(roomid),
                lambda store, roomid: store.register(roomid, "", ""),
                lambda store, roomid: store.login(roomid, "alice", PASSWORD),
                lambda store, roomid: store.logout(roomid, "alice", "x"),
                lambda store, roomid: store.post_message(roomid, "", "", "", ""),
                lambda store, roomid: store.conversation(roomid),
                lambda store, roomid: store.messages(roomid, before="x", limit=0),
                lambda store, roomid: store.follow(roomid, after="x"),
            ]
        ),
    )
    def use_an_unknown_room(self, roomid: str, call: Callable[[RoomStore, str], object]) -> None:
        """An unknown room is reported before any other check of the request."""
        if roomid not in self.model:
            self._refused({RoomNotFound}, lambda: call(self.store, roomid))

    @rule(roomid=rooms, limit=st.one_of(st.none(), st.integers(1, 4)))
    def read_conversation(self, roomid: str, limit: int | None) -> None:
        """The last `limit` lines (CONVERSATION_LIMIT by default), oldest first."""
        lines = [m.line for m in self.model[roomid].messages]
        expected = lines[-(limit or CONVERSATION_LIMIT) :]
        assert self.store.conversation(roomid, limit) == expected
        assert self.store.conversation(roomid, limit) == expected
        self.seen["conversation cut"] += len(expected) < len(lines)

    @rule(roomid=rooms, limit=st.integers(1, 4))
    def page_through_history(self, roomid: str, limit: int) -> None:
        """Paging back from the newest, then forward from the oldest, visits every
        message once, in order; `more` says whether that direction goes on."""
        history = self.model[roomid].messages
        page = self.store.messages(roomid, limit=limit)
        assert (page.messages, page.more) == (history[-limit:], len(history) > limit)
        seen = page.messages
        while page.more:
            end = len(history) - len(seen)
            page = self.store.messages(roomid, before=seen[0].id, limit=limit)
            assert (page.messages, page.more) == (history[max(end - limit, 0) : end], end > limit)
            seen = page.messages + seen
            self.seen["several pages"] += 1
        assert seen == history
        if not history:
            return
        seen = history[:1]
        while True:
            start = len(seen)
            page = self.store.messages(roomid, after=seen[-1].id, limit=limit)
            expected_more = len(history) > start + limit
            assert (page.messages, page.more) == (history[start : start + limit], expected_more)
            seen = seen + page.messages
            if not page.more:
                break
        assert seen == history

    @rule(roomid=rooms, arguments=BAD_PAGES)
    def page_with_bad_arguments(self, roomid: str, arguments: dict[str, Any]) -> None:
        """Both cursors at once, a limit outside 1-200 or a malformed id: InvalidInput."""
        self._refused({InvalidInput}, lambda: self.store.messages(roomid, **arguments))

    @invariant()
    def snapshot_matches_the_model(self) -> None:
        """Rooms, aliases, display names and every line in order, nothing else."""
        expected = {
            roomid: {
                "users": {user.name: {} for user in room.users.values()},
                "messages": [message.line for message in room.messages],
                "alias": room.alias,
            }
            for roomid, room in self.model.items()
        }
        assert self.store.snapshot() == expected

    @invariant()
    def secrets_match_the_model(self) -> None:
        """Accounts sit under their case-folded name with a scrypt hash that never
        changes, and only the SHA-256 of each live token is kept, oldest first."""
        for roomid, room in self.model.items():
            dump = self.store.backend.dump_room(roomid)
            assert dump.users.keys() == room.users.keys()
            for key, user in room.users.items():
                record = dump.users[key]
                assert record.username == user.name
                assert record.password_hash.startswith(f"{CHEAP_HASH}$")
                user.password_hash = user.password_hash or record.password_hash
                assert record.password_hash == user.password_hash
                assert dump.tokens.get(key, []) == [token_digest(t) for t in user.tokens]

    @invariant()
    def login_refusals_say_one_thing(self) -> None:
        """Unknown name or wrong password: the same sentence, which tells nothing."""
        assert len(self.login_refusals) <= 1


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def empty_stores(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A function that returns the URL of an empty store each time it is called:
    memory, a SQLite file in a new directory, or the flushed session redis-server."""
    if kind == "redis":
        server = request.getfixturevalue("redis_server")

        def flushed() -> str:
            server.flush()
            return str(server.redis_url)

        return flushed
    if kind == "sqlite":
        return lambda: f"sqlite:///{tempfile.mkdtemp(dir=tmp_path)}/chat.sqlite3"
    return lambda: "memory://"


@pytest.mark.parametrize("kind", BACKENDS)
def test_random_operations_agree_with_the_model(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    new_url = empty_stores(kind, request, tmp_path)
    seen: Counter[str] = Counter()
    run_state_machine_as_test(lambda: StoreMachine(new_url(), seen), settings=MACHINE_SETTINGS)
    assert OUTCOMES - set(seen) == set(), "outcomes that no run reached"


# Round trips of any text, each example in a room of its own.

ROUND_TRIP = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    # The store is shared by the examples of one test, each in its own room.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(params=BACKENDS)
def cheap_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoomStore]:
    """An empty store on each backend, with cheap password hashing."""
    store = RoomStore.from_url(
        backend_url(request.param, request, tmp_path), hash_method=CHEAP_HASH
    )
    yield store
    store.close()


def reread(store: RoomStore) -> RoomStore:
    """A second store on the same backend: it answers from storage, not from the
    first one's caches."""
    return RoomStore(store.backend)


@ROUND_TRIP
@given(alias=ALIASES)
def test_an_alias_is_kept_stripped_or_refused(cheap_store: RoomStore, alias: str) -> None:
    """Any text: a room whose alias is the text stripped, or InvalidInput and no room."""
    rooms_before = sorted(cheap_store.backend.room_ids())
    if expected_alias(alias) is None:
        with pytest.raises(InvalidInput):
            cheap_store.create_room(alias)
        assert sorted(cheap_store.backend.room_ids()) == rooms_before
        return
    roomid = cheap_store.create_room(alias)
    assert ROOMID.fullmatch(roomid)
    assert cheap_store.alias(roomid) == alias.strip()
    assert reread(cheap_store).alias(roomid) == alias.strip()


@ROUND_TRIP
@given(name=USERNAMES)
def test_a_username_is_normalised_or_refused(cheap_store: RoomStore, name: str) -> None:
    """Any text: an account shown as the NFKC-normalised, stripped name, which any
    spelling that folds to the same case logs into and none can register again;
    or InvalidInput and no account."""
    roomid = cheap_store.create_room("names")
    shown = expected_new_username(name)
    if shown is None:
        with pytest.raises(InvalidInput):
            cheap_store.register(roomid, name, PASSWORD)
        assert cheap_store.backend.dump_room(roomid).users == {}
        return
    assert cheap_store.register(roomid, name, PASSWORD) == shown
    stored = cheap_store.backend.dump_room(roomid).users
    assert [(key, user.username) for key, user in stored.items()] == [(shown.casefold(), shown)]
    variants = {name, shown, shown.upper(), shown.lower(), shown.casefold(), shown.swapcase()}
    for variant in sorted(variants):
        same = expected_username(variant)
        if same is None or not same_name(same, shown):
            continue  # not a way to type this name (İ lowercases to i + a combining dot)
        assert TOKEN.fullmatch(cheap_store.login(roomid, variant, PASSWORD))
        with pytest.raises(UsernameTaken):
            cheap_store.register(roomid, variant, PASSWORD)
    with pytest.raises(AuthenticationFailed):
        cheap_store.login(roomid, shown, PASSWORD.upper())


VALID_NAMES = USERNAMES.map(expected_new_username).filter(lambda name: name is not None)


@ROUND_TRIP
@given(name=VALID_NAMES, text=MESSAGES)
def test_a_message_is_stored_stripped_or_refused(
    cheap_store: RoomStore, name: str, text: str
) -> None:
    """Any text: a message that is the text stripped, in a seed line ending with
    `<name> text`, read back the same from storage; or InvalidInput and nothing."""
    roomid = cheap_store.create_room("messages")
    cheap_store.register(roomid, name, PASSWORD)
    token = cheap_store.login(roomid, name, PASSWORD)
    expected = expected_message(text)
    if expected is None:
        with pytest.raises(InvalidInput):
            cheap_store.post_message(roomid, name, token, text)
        assert cheap_store.conversation(roomid) == []
        assert reread(cheap_store).messages(roomid).messages == []
        return
    posted = cheap_store.post_message(roomid, name, token, text)
    assert (posted.username, posted.text) == (name, text.strip())
    [line] = cheap_store.conversation(roomid)
    assert line == posted.line == seed_line(posted)
    assert line.endswith(f"<{name}> {text.strip()}")
    match = LINE.fullmatch(line)
    assert match is not None
    assert (match["name"], match["text"]) == (name, text.strip())
    assert reread(cheap_store).messages(roomid).messages == [posted]


@ROUND_TRIP
@given(client_id=CLIENT_ID_TEXT)
def test_a_client_id_stores_one_message_per_user_or_is_refused(
    cheap_store: RoomStore, client_id: str
) -> None:
    """Any text: a client_id under which each user stores one message (a retry
    gets the first copy back; another text under it is refused), or
    InvalidInput and nothing."""
    roomid = cheap_store.create_room("retries")
    tokens = {}
    for name in ["alice", "bob"]:
        cheap_store.register(roomid, name, PASSWORD)
        tokens[name] = cheap_store.login(roomid, name, PASSWORD)
    if not is_client_id(client_id):
        with pytest.raises(InvalidInput):
            cheap_store.post_message(roomid, "alice", tokens["alice"], "hi", client_id)
        assert cheap_store.conversation(roomid) == []
        return
    first = cheap_store.post_message(roomid, "alice", tokens["alice"], "hi", client_id)
    retry = cheap_store.post_message(roomid, "ALICE", tokens["alice"], " hi ", client_id)
    with pytest.raises(ClientIdReused):
        cheap_store.post_message(roomid, "alice", tokens["alice"], "changed", client_id)
    other = cheap_store.post_message(roomid, "bob", tokens["bob"], "hi", client_id)
    assert retry == first
    assert other.id != first.id
    assert reread(cheap_store).conversation(roomid) == [first.line, other.line]


CURSORS = st.one_of(
    ANY_TEXT,
    st.text(st.sampled_from("0123456789-٠١٢३০０𝟘 +"), max_size=24),
    st.integers(0, 2**70).map(str),
    st.builds("{}-{}".format, st.integers(0, 2**70), st.integers(0, 2**70)),
)


@pytest.mark.parametrize(
    "cheap_store",
    [
        "memory",
        "sqlite",
        "redis",
    ],
    indirect=True,
)
@ROUND_TRIP
@given(cursor=CURSORS, direction=st.sampled_from(["before", "after"]))
def test_any_cursor_gives_a_page_or_invalid_input(
    cheap_store: RoomStore, cursor: str, direction: str
) -> None:
    """Cursors come from clients: whatever they send is answered with a run of the
    room's messages or refused as InvalidInput, never another error."""
    roomid = cheap_store.create_room("cursors")
    cheap_store.register(roomid, "alice", PASSWORD)
    token = cheap_store.login(roomid, "alice", PASSWORD)
    history = [cheap_store.post_message(roomid, "alice", token, f"m{n}") for n in range(3)]
    try:
        page = cheap_store.messages(roomid, limit=2, **{direction: cursor})
    except InvalidInput:
        return
    runs = [history[start : start + len(page.messages)] for start in range(len(history))]
    assert page.messages in runs
    if direction == "after":  # an event stream resumes from the same cursors
        stream = cheap_store.follow(roomid, after=cursor, keepalive=0.01)
        try:
            first, following = next(stream), next(stream)
        finally:
            stream.close()
        assert first == Presence([])
        assert following == (page.messages[0] if page.messages else None)


@ROUND_TRIP
@given(
    password=st.builds(str.__add__, ANY_TEXT, st.characters(categories=("Cs",))),
    registered=st.booleans(),
)
def test_a_password_that_is_not_text_logs_nobody_in(
    cheap_store: RoomStore, password: str, registered: bool
) -> None:
    """A lone surrogate is nobody's password: login refuses it with one of the
    store's errors, whether or not the name exists."""
    roomid = cheap_store.create_room("passwords")
    if registered:
        cheap_store.register(roomid, "alice", PASSWORD)
    with pytest.raises((AuthenticationFailed, InvalidInput)):
        cheap_store.login(roomid, "alice", password)


def test_the_text_strategies_reach_every_outcome() -> None:
    """The strategies above are only useful if they make both valid and refused
    values, with the characters the rules single out."""
    strategies = {"alias": ALIASES, "name": USERNAMES, "message": MESSAGES}
    examples: dict[str, list[str]] = {kind: [] for kind in strategies}
    for kind, strategy in strategies.items():
        # Each is drawn on its own, so a change to one does not move the others.
        @settings(max_examples=300, derandomize=True, database=None)
        @given(value=strategy)
        def collect(value: str) -> None:
            examples[kind].append(value)  # noqa: B023 (called at once, in this loop)

        collect()
    checks = {
        "alias": expected_alias,
        "name": expected_username,
        "message": expected_message,
    }
    for kind, check in checks.items():
        outcomes = {check(value) is None for value in examples[kind]}
        assert outcomes == {True, False}, kind
    characters = set(itertools.chain.from_iterable(examples["message"]))
    categories = {unicodedata.category(c) for c in characters}
    assert {"Cc", "Cs", "Zs", "Mn", "Cf"} <= categories
    assert any(ord(c) > 0xFFFF for c in characters)
    accepted = [m for m in map(expected_message, examples["message"]) if m is not None]
    assert any("\n" in m for m in accepted)
    assert any("\t" in m for m in accepted)
    assert any(len(m) == 2000 for m in accepted)
