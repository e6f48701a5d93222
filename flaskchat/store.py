"""`RoomStore`: the service that owns rooms, accounts and messages.

Pure Python (no Flask): a script, a CLI command or a test uses it exactly as the
web views do. Every rule of DESIGN.md section 2 is applied here, through `rules`,
before anything reaches a backend.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from . import presence, rules
from .backends import Backend, StoredMessage, UserRecord, open_backend
from .backends.base import BAN, DELETE, GONE, UNBAN, UNSET, AddedUser, RoomSettings, Unset
from .cache import BoundedCache, size_of_strings
from .errors import (
    AuthenticationFailed,
    ClientIdReused,
    Forbidden,
    InvalidInput,
    LimitReached,
    NotFound,
    RoomNotFound,
    StoreUnavailable,
    UsernameTaken,
)
from .live import RoomSignals, run_cpu_bound
from .presence import Presence as Presence
from .presence import PresenceBook
from .presence import PresenceChange as PresenceChange

BAD_LOGIN = "Unknown username or wrong password."
NOT_LOGGED_IN = "You are not logged in (or your session has ended). Please log in again."
NOT_OWNER = "That is not this room's owner key."
BANNED = "The owner of this room has removed you from it."
CLOSED = "This room is closed to new members."


# A stream ticket lets one event stream say who is listening, once, for a minute.
TICKET_LIFETIME = 60.0
# Missed messages are replayed in batches of this many.
REPLAY_BATCH = 200
PAGE_MAX = 200
# What each in-process cache may hold at most, in bytes (README, Security):
# clients choose what is cached, so no cache is bounded by entries alone.
MIB = 1024 * 1024
FORMATTED_BYTES = 16 * MIB  # formatted messages
CONVERSATION_BYTES = 16 * MIB  # the latest conversation of each room
SHARED_READ_BYTES = 16 * MIB  # the latest read of each room's listeners
SMALL_CACHE_BYTES = 2 * MIB  # each of: aliases, display names
# How long a room known to exist is believed to, in each process: a room removed
# through another process or server is 404 here within this time.
ROOM_CHECK_AGE = 1.0
# How often (per room and process) messages past a room's retention are removed.
RETENTION_CHECK = 60.0
# Messages an export reads at a time: its memory stays the same however long the room.
EXPORT_BATCH = 500
# How long listeners woken together may share one read. Beyond it a listener
# reads again, so a wake-up that never came costs at most one presence check.
SHARED_READ_AGE = 1.0


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message with its seed line, formatted in the store's time zone."""

    id: str
    posted_at: datetime
    username: str
    text: str
    line: str


@dataclass(frozen=True, slots=True)
class Page:
    """A page of history, oldest first; `more` says whether the direction the
    page was asked for holds further messages."""

    messages: list[Message]
    more: bool


@dataclass(frozen=True, slots=True)
class Conversation:
    """The seed's conversation at one moment: the same object comes back while
    the room is unchanged, so callers may key their own caches on it."""

    version: tuple[str | None, int]  # the room's newest id, and the line limit
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """A moderation event on a stream: "delete" (`subject`: the id of the message
    removed), "ban" or "unban" (`subject`: the name), or "gone" (the room was
    deleted; the stream ends)."""

    id: str
    kind: str
    subject: str


# What an event stream yields: a message, the presence list or a change to it, a
# moderation event, or None when it is time for a keep-alive.
StreamItem = Message | Presence | PresenceChange | RoomEvent | None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """An event stream that passed its checks: where it starts reading, and who
    listens (None: anonymous; `session` is the digest of the login's token)."""

    roomid: str
    cursor: str | None
    username: str | None
    session: str


@dataclass(slots=True)
class PresentStream:
    """A stream counted in the room's presence while it is open."""

    stream: str
    room_gone: bool = False  # the room was deleted: nothing to be present in


@dataclass(frozen=True, slots=True)
class NewRoom:
    """A room just made, with the key that proves ownership (shown once)."""

    roomid: str
    owner_key: str


@dataclass(frozen=True, slots=True)
class OwnerSettings:
    """What the owner set; `banned` (names as shown) only for the owner."""

    registration_open: bool
    retention_days: int | None
    banned: list[str] | None


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """What an operator sees of a room (no secrets)."""

    roomid: str
    alias: str
    accounts: int
    messages: int
    has_owner: bool
    settings: OwnerSettings


@dataclass(frozen=True, slots=True)
class SharedRead:
    """What the listeners of a room woken together read, for those that follow."""

    cursor: str | None
    generation: int
    read_at: float
    batch: list[StoredMessage]


def _never() -> bool:
    return False


def _stored_size(stored: StoredMessage) -> int:
    # The object, its datetime, and its strings.
    return 150 + size_of_strings((stored.id, stored.username, stored.text))


def _message_size(message: Message) -> int:
    """A formatted message shares its strings with the stored one it came from,
    which is its key in the cache: both are counted here."""
    return 300 + size_of_strings((message.id, message.username, message.text, message.line))


class RoomStore:
    """Rooms, per-room accounts and messages, over any backend.

    `RoomStore()` keeps everything in memory; `RoomStore.from_url(url)` opens
    `memory://` or `sqlite:///...`. Methods raise `StoreError` subclasses.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        timezone_name: str = "UTC",
        conversation_limit: int = 50,
        max_message_length: int = rules.MESSAGE_MAX,
        hash_method: str = "scrypt",
        max_users_per_room: int = 1000,
        max_tokens_per_user: int = 10,
    ) -> None:
        if backend is None:
            backend = open_backend("memory://")
        self.backend = backend
        self.tz = rules.parse_timezone(timezone_name)
        self.conversation_limit = conversation_limit
        self.max_message_length = max_message_length
        # werkzeug's method string; "scrypt" is scrypt:32768:8:1 (about 0.1 s of CPU).
        self.hash_method = hash_method
        self.max_users_per_room = max_users_per_room
        # Logging in again past this many devices logs the oldest one out.
        self.max_tokens_per_user = max_tokens_per_user
        self.signals = RoomSignals(backend)
        self.presence = PresenceBook(backend, self.signals.notify)
        # Caches, each bounded in bytes. Rooms are never deleted and their alias
        # never changes, so a room seen once can be answered from memory; nor do
        # messages and display names change once written. A conversation is
        # kept with the newest id it was read at, the listeners' shared read
        # with its cursor and generation.
        self._aliases = BoundedCache[str, tuple[str, float]](
            SMALL_CACHE_BYTES, lambda entry: sys.getsizeof(entry[0])
        )
        self._retention_checked = BoundedCache[str, float](SMALL_CACHE_BYTES, lambda _: 24)
        self._formatted = BoundedCache[StoredMessage, Message](FORMATTED_BYTES, _message_size)
        self._names = BoundedCache[tuple[str, str], str](SMALL_CACHE_BYTES, sys.getsizeof)
        self._conversations = BoundedCache[str, Conversation](
            CONVERSATION_BYTES, lambda snapshot: size_of_strings(snapshot.lines)
        )
        self._wakeups = BoundedCache[str, SharedRead](
            SHARED_READ_BYTES, lambda shared: sum(map(_stored_size, shared.batch))
        )

    @classmethod
    def from_url(
        cls, url: str, *, instance_path: str | os.PathLike[str] | None = None, **options: Any
    ) -> RoomStore:
        """Open the backend named by `url`; relative SQLite paths land in `instance_path`."""
        return cls(open_backend(url, instance_path), **options)

    # Rooms

    def create_room(self, alias: str) -> str:
        """A new room; its owner key is not kept anywhere (see `new_room`)."""
        return self.new_room(alias).roomid

    def new_room(self, alias: str) -> NewRoom:
        """A new room and its owner key, which is stored only as its digest."""
        alias = rules.clean_alias(alias)
        owner_key = rules.new_token()
        while True:
            roomid = rules.new_roomid()
            if self.backend.create_room(roomid, alias, rules.token_digest(owner_key)):
                self._aliases.put(roomid, (alias, time.monotonic()))
                return NewRoom(roomid, owner_key)

    def alias(self, roomid: str) -> str:
        """The room's alias; raises `RoomNotFound`, so it doubles as the existence
        check. An alias never changes, but a room may be removed through another
        process: what this one knows is asked again after `ROOM_CHECK_AGE`."""
        now = time.monotonic()
        cached = self._aliases.get(roomid)
        if cached is not None and now - cached[1] < ROOM_CHECK_AGE:
            return cached[0]
        if not rules.looks_like_roomid(roomid):
            raise RoomNotFound()
        alias = self.backend.room_alias(roomid)
        if alias is None:
            self._aliases.pop(roomid)
            raise RoomNotFound()
        self._aliases.put(roomid, (alias, now))
        return alias

    # Owners

    def _check_owner(self, roomid: str, owner_key: str) -> RoomSettings:
        """The room's settings, if `owner_key` is its owner's; else 401."""
        self.alias(roomid)
        settings = self.backend.room_settings(roomid)
        if not rules.key_matches(owner_key, settings.owner_digest):
            raise AuthenticationFailed(NOT_OWNER)
        return settings

    def rotate_owner_key(self, roomid: str, owner_key: str) -> str:
        """A new owner key; the old one stops working."""
        self._check_owner(roomid, owner_key)
        return self.issue_owner_key(roomid)

    def issue_owner_key(self, roomid: str) -> str:
        """A new owner key without the old one: for an operator, whose word is
        the server's (`flask room owner-key`)."""
        self.alias(roomid)
        owner_key = rules.new_token()
        self.backend.update_settings(roomid, owner_digest=rules.token_digest(owner_key))
        return owner_key

    def settings(self, roomid: str, owner_key: str | None = None) -> OwnerSettings:
        """The room's settings; with the owner key, the ban list too."""
        if owner_key is None:
            self.alias(roomid)
            return self._owner_settings(self.backend.room_settings(roomid), owner=False)
        return self._owner_settings(self._check_owner(roomid, owner_key), owner=True)

    @staticmethod
    def _owner_settings(settings: RoomSettings, *, owner: bool) -> OwnerSettings:
        banned = sorted(settings.banned.values()) if owner else None
        return OwnerSettings(settings.registration_open, settings.retention_days, banned)

    def update_settings(
        self,
        roomid: str,
        owner_key: str,
        *,
        registration: str | None = None,
        retention_days: object = UNSET,
    ) -> OwnerSettings:
        """Open or close registration ("open", "closed"), set how many days
        messages are kept (None: for ever). Older messages go at once."""
        self._check_owner(roomid, owner_key)
        if registration not in (None, "open", "closed"):
            raise InvalidInput('registration must be "open" or "closed".')
        days: int | Unset | None = UNSET
        if not isinstance(retention_days, Unset):
            days = rules.check_retention_days(retention_days)
        registration_open = None if registration is None else registration == "open"
        self.backend.update_settings(
            roomid, registration_open=registration_open, retention_days=days
        )
        self._retention_checked.pop(roomid)
        self._apply_retention(roomid)
        return self.settings(roomid, owner_key)

    def ban(self, roomid: str, owner_key: str, username: str) -> None:
        """Remove a member: every device logged out, presence ended at once, and
        login, registration and messages refused under that name (case-folded)."""
        self._check_owner(roomid, owner_key)
        key, user = self._member(roomid, username)
        self.backend.set_ban(roomid, key, user.username)
        self.backend.remove_tokens(roomid, key)
        self.backend.end_presence_of(roomid, user.username)
        self.backend.append_event(roomid, BAN, user.username)
        self.presence.drop_name(roomid, user.username)
        self.signals.notify(roomid)

    def unban(self, roomid: str, owner_key: str, username: str) -> None:
        self._check_owner(roomid, owner_key)
        key, user = self._member(roomid, username)
        if not self.backend.set_ban(roomid, key, None):
            raise NotFound(f"{user.username} is not banned from this room.")
        self.backend.append_event(roomid, UNBAN, user.username)
        self.signals.notify(roomid)

    def _member(self, roomid: str, username: str) -> tuple[str, UserRecord]:
        try:
            key = rules.username_key(username)
        except InvalidInput:
            key = ""
        user = self.backend.get_user(roomid, key) if key else None
        if user is None:
            raise NotFound("There is no member of that name in this room.")
        return key, user

    def delete_message(
        self,
        roomid: str,
        message_id: str,
        *,
        username: str | None = None,
        token: str | None = None,
        owner_key: str | None = None,
    ) -> None:
        """Remove a message, text and all, as its author (`username` and
        `token`) or the owner (`owner_key`); streams get a "delete" event."""
        key = None
        if owner_key is not None:
            self._check_owner(roomid, owner_key)
        else:
            key = self._authenticate(roomid, username or "", token or "")
        author = self.backend.message_author(roomid, message_id)
        if author is None:
            raise NotFound("There is no such message in this room.")
        if key is not None and author != key:
            raise Forbidden("You can delete only your own messages.")
        if self.backend.delete_message(roomid, message_id) is None:
            raise NotFound("There is no such message in this room.")
        self.signals.notify(roomid)

    def export(self, roomid: str, owner_key: str) -> Iterator[Message]:
        """Every message, oldest first, read a batch at a time: a room of a million
        messages exports in the memory of one batch. The key is checked now."""
        self._check_owner(roomid, owner_key)
        return self._export(roomid)

    def _export(self, roomid: str) -> Iterator[Message]:
        cursor: str | None = None
        while batch := self.backend.messages_after(roomid, cursor, EXPORT_BATCH):
            for stored in batch:
                yield self._format(stored)
            cursor = batch[-1].id

    def delete_room(self, roomid: str, owner_key: str) -> None:
        """Remove the room and every trace of it (its id is never used again)."""
        self._check_owner(roomid, owner_key)
        self.remove_room(roomid)

    def remove_room(self, roomid: str) -> None:
        """`delete_room` with the server's authority (`flask room delete`)."""
        self.alias(roomid)
        self.backend.remove_room(roomid)
        self._aliases.pop(roomid)
        self.signals.notify(roomid)

    def summary(self, roomid: str) -> RoomSummary:
        alias = self.alias(roomid)
        settings = self.backend.room_settings(roomid)
        return RoomSummary(
            roomid,
            alias,
            self.backend.count_users(roomid),
            self.backend.count_messages(roomid),
            bool(settings.owner_digest),
            self._owner_settings(settings, owner=True),
        )

    def room_ids(self) -> list[str]:
        return list(self.backend.room_ids())

    def export_room(self, roomid: str) -> Iterator[Message]:
        """`export` with the server's authority (`flask room export`)."""
        self.alias(roomid)
        return self._export(roomid)

    def _apply_retention(self, roomid: str) -> None:
        """Remove messages past the room's retention, at most once a minute per
        room and process; the "trim" event it leaves tells caches everywhere."""
        now = time.monotonic()
        checked = self._retention_checked.get(roomid)
        if checked is not None and now - checked < RETENTION_CHECK:
            return
        self._retention_checked.put(roomid, now)
        days = self.backend.room_settings(roomid).retention_days
        if days is not None:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            if self.backend.purge_before(roomid, cutoff):
                self.signals.notify(roomid)

    # Accounts

    def register(self, roomid: str, username: str, password: str) -> str:
        """Create an account; returns the name as the room will show it."""
        self.alias(roomid)
        username = rules.clean_new_username(username)
        rules.check_password(password)
        # One lookup: is there a member whose name this one is drawn like?
        lookalike = rules.username_skeleton(username)
        key = username.casefold()
        twin = None if lookalike == key else self.backend.get_user(roomid, lookalike)
        if twin is not None:
            raise UsernameTaken(
                f"The name {username} looks too much like {twin.username}, "
                "a name already in this room."
            )
        settings = self.backend.room_settings(roomid)
        if key in settings.banned:
            raise Forbidden(BANNED)
        if not settings.registration_open:
            raise Forbidden(CLOSED)
        full = f"This room has reached its limit of {self.max_users_per_room} accounts."
        if self.backend.count_users(roomid) >= self.max_users_per_room:  # spares the hash
            raise LimitReached(full)
        user = UserRecord(username, run_cpu_bound(self._hash, password))
        # The backend counts again as it writes: others may have joined meanwhile.
        added = self.backend.add_user(roomid, key, user, self.max_users_per_room)
        if added is AddedUser.ROOM_FULL:
            raise LimitReached(full)
        if added is AddedUser.NAME_TAKEN:
            raise UsernameTaken(f"The name {username} is already taken in this room.")
        return username

    def login(self, roomid: str, username: str, password: str) -> str:
        """Check the password and return a new random token for this device.

        Unknown users and wrong passwords fail alike and take about as long.
        """
        self.alias(roomid)
        try:
            key = rules.username_key(username)
        except InvalidInput:
            key = None
        user = None if key is None else self.backend.get_user(roomid, key)
        if user is not None and key in self.backend.room_settings(roomid).banned:
            raise Forbidden(BANNED)
        if not rules.is_text(password):  # matches no hash, and scrypt cannot take it
            user, password = None, ""
        if user is None or key is None:
            run_cpu_bound(check_password_hash, self._dummy_hash, password)
            raise AuthenticationFailed(BAD_LOGIN)
        if not run_cpu_bound(check_password_hash, user.password_hash, password):
            raise AuthenticationFailed(BAD_LOGIN)
        token = rules.new_token()
        self.backend.add_token(
            roomid, key, rules.token_digest(token), keep=self.max_tokens_per_user
        )
        return token

    def logout(self, roomid: str, username: str, token: str) -> None:
        """Revoke one token and end what it opened: its unused stream tickets stop
        working, its streams stop counting the user as present. The user's other
        devices stay logged in and online."""
        key = self._authenticate(roomid, username, token)
        session = rules.token_digest(token)
        self.backend.remove_token(roomid, key, session)
        self.backend.end_presence(roomid, session)
        self.presence.drop_session(roomid, session)
        self.signals.notify(roomid)  # this process's listeners look at once

    def _session_live(self, roomid: str, username: str, session: str) -> bool:
        """Whether the login that opened a stream still holds (tickets made before
        sessions were recorded have none, and count as live)."""
        if not session:
            return True
        return session in self.backend.token_digests(roomid, rules.username_key(username))

    def _authenticate(self, roomid: str, username: str, token: str) -> str:
        """Return the user's key if `token` is one of their live tokens."""
        self.alias(roomid)
        try:
            key = rules.username_key(username)
        except InvalidInput:
            raise AuthenticationFailed(NOT_LOGGED_IN) from None
        digests = self.backend.token_digests(roomid, key)
        if not rules.digest_matches(rules.token_digest(token), digests):
            # A ban logged the name out: say so, rather than "log in again".
            if key in self.backend.room_settings(roomid).banned:
                raise Forbidden(BANNED)
            raise AuthenticationFailed(NOT_LOGGED_IN)
        return key

    @cached_property
    def _dummy_hash(self) -> str:
        return run_cpu_bound(self._hash, rules.new_token())

    def _hash(self, password: str) -> str:
        return generate_password_hash(password, method=self.hash_method)

    # Messages

    def post_message(
        self, roomid: str, username: str, token: str, text: str, client_id: str | None = None
    ) -> Message:
        """Store a message from a logged-in user. A retry with the same `client_id`
        returns the first copy and stores nothing; the same `client_id` with
        another text raises `ClientIdReused` (one rule for every backend)."""
        key = self._authenticate(roomid, username, token)
        text = rules.clean_message(text, self.max_message_length)
        client_id = rules.clean_client_id(client_id)
        self._apply_retention(roomid)
        name = self._display_name(roomid, key)
        stored, created = self.backend.append_message(
            roomid, key, name, text, datetime.now(UTC), client_id
        )
        if not created and stored.text != text:
            raise ClientIdReused()
        return self._message(stored)

    def conversation(self, roomid: str, limit: int | None = None) -> list[str]:
        """The seed's `get_conversation`: the last lines, oldest first."""
        return list(self.conversation_snapshot(roomid, limit).lines)

    def conversation_snapshot(self, roomid: str, limit: int | None = None) -> Conversation:
        """The last lines with the version they belong to. Messages are only ever
        appended, so the room's newest id decides the answer: while it stays the
        same, the snapshot comes from memory."""
        self.alias(roomid)
        self._apply_retention(roomid)
        limit = self.conversation_limit if limit is None else limit
        version = (self.backend.latest_message_id(roomid), limit)
        cached = self._conversations.get(roomid)
        if cached is not None and cached.version == version:
            return cached
        recent = self.backend.recent_messages(roomid, limit)
        snapshot = Conversation(version, tuple(self._message(m).line for m in recent))
        self._conversations.put(roomid, snapshot)
        return snapshot

    def messages(
        self,
        roomid: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> Page:
        """History by cursor: the `limit` messages just before `before`, just after
        `after`, or the newest ones. Cost does not grow with the room's history."""
        self.alias(roomid)
        self._apply_retention(roomid)
        if before is not None and after is not None:
            raise InvalidInput("Ask for messages before an id or after one, not both.")
        if not 1 <= limit <= PAGE_MAX:
            raise InvalidInput(f"A page holds 1 to {PAGE_MAX} messages.")
        if after is not None:
            stored = self.backend.messages_after(roomid, after, limit + 1)
            more, stored = len(stored) > limit, stored[:limit]
        else:
            if before is None:
                stored = self.backend.recent_messages(roomid, limit + 1)
            else:
                stored = self.backend.messages_before(roomid, before, limit + 1)
            more, stored = len(stored) > limit, stored[-limit:]
        return Page([self._message(m) for m in stored], more)

    # Live

    def issue_ticket(self, roomid: str, username: str, token: str) -> str:
        """A single-use ticket that lets an event stream count `username` as present
        (a token never goes into a URL)."""
        key = self._authenticate(roomid, username, token)
        name = self._display_name(roomid, key)
        ticket = rules.new_token()
        expires_at = time.time() + TICKET_LIFETIME
        session = rules.token_digest(token)
        self.backend.add_ticket(roomid, rules.token_digest(ticket), name, expires_at, session)
        return ticket

    def redeem_ticket(self, roomid: str, ticket: str) -> str:
        """Use up a ticket; returns the name it was issued to."""
        return self._redeem(roomid, ticket)[0]

    def _redeem(self, roomid: str, ticket: str) -> tuple[str, str]:
        """Use up a ticket whose login still holds; its name and session."""
        self.alias(roomid)
        taken = self.backend.take_ticket(roomid, rules.token_digest(ticket), time.time())
        if taken is None or not self._session_live(roomid, *taken):
            raise AuthenticationFailed(
                "This stream ticket was already used or has expired. Please reconnect."
            )
        return taken

    def online(self, roomid: str) -> list[str]:
        """Names with an open event stream (or one closed within the grace period),
        as this process last read them (at most `PRESENCE_CHECK` seconds ago
        while the room has listeners here)."""
        self.alias(roomid)
        return list(self.presence.current(roomid)[1])

    def follow(
        self,
        roomid: str,
        *,
        after: str | None = None,
        ticket: str | None = None,
        username: str | None = None,
        keepalive: float = 15.0,
        closed: Callable[[], bool] | None = None,
    ) -> Iterator[StreamItem]:
        """An endless stream for one listener: first a `Presence`, then every
        message after id `after` (from storage, in order, none twice), then new
        ones as they come, with a `PresenceChange` whenever names come or go;
        None whenever `keepalive` seconds passed in silence. With a `ticket`
        (or, from a script, a `username`), the listener counts as present while
        the stream is open and its login holds. `closed` is asked at every
        wake-up (at least every `PRESENCE_CHECK` seconds): once it says the
        listener has gone, the stream ends.

        Checks (unknown room, malformed `after`, a bad ticket) run now, before
        the first item.
        """
        start = self.start_stream(roomid, after=after, ticket=ticket, username=username)
        return self.stream_items(start, keepalive, closed)

    def start_stream(
        self,
        roomid: str,
        *,
        after: str | None = None,
        ticket: str | None = None,
        username: str | None = None,
    ) -> StreamStart:
        """Check a stream's request and use up its ticket; see `follow`."""
        self.alias(roomid)
        if after is not None:
            self.backend.messages_after(roomid, after, 0)
        session = ""
        if ticket is not None:
            username, session = self._redeem(roomid, ticket)
        # Fixed now, so that a client may catch up from history as soon as the
        # response begins: everything after this point comes on the stream.
        cursor = after if after is not None else self.backend.latest_message_id(roomid)
        return StreamStart(roomid, cursor, username, session)

    @contextlib.contextmanager
    def present(self, start: StreamStart) -> Iterator[PresentStream]:
        """Count a stream's listener as present while the block runs; afterwards
        the name stays online for the grace period if its login still holds."""
        present = self.open_presence(start)
        try:
            yield present
        finally:
            self.close_presence(start, present)

    def open_presence(self, start: StreamStart) -> PresentStream:
        """`present`, begun: the stream's room is watched, its listener shown."""
        present = PresentStream(rules.new_token())
        self.presence.open(start.roomid)
        if start.username is not None:
            try:
                self.presence.join(start.roomid, present.stream, start.username, start.session)
            except BaseException:
                self.presence.close(start.roomid)
                raise
        return present

    def close_presence(self, start: StreamStart, present: PresentStream) -> None:
        """`present`, ended. Best effort: if the store is down, the presence
        lapses by itself."""
        roomid, username = start.roomid, start.username
        try:
            with contextlib.suppress(StoreUnavailable):
                if username is not None and not present.room_gone:
                    live = self._session_live(roomid, username, start.session)
                    self.presence.leave(roomid, present.stream, grace=live)
        finally:
            self.presence.close(roomid)

    def read_after(
        self, roomid: str, cursor: str | None, generation: int | None = None
    ) -> tuple[list[StreamItem], str | None, bool]:
        """The stream items after `cursor` (at most one batch), the new cursor, and
        whether more may follow at once. Listeners woken together (same
        `generation`) share one read; a "gone" event is always the last item."""
        if generation is None:
            batch = self.backend.events_after(roomid, cursor, REPLAY_BATCH)
        else:
            batch = self._messages_after(roomid, cursor, generation)
        items: list[StreamItem] = []
        for stored in batch:
            cursor = stored.id
            if stored.kind == "message":
                items.append(self._message(stored))
            elif stored.kind == GONE:
                items.append(RoomEvent(stored.id, GONE, ""))
                return items, cursor, False
            elif stored.kind == DELETE:
                items.append(RoomEvent(stored.id, DELETE, stored.target or ""))
            elif stored.kind in (BAN, UNBAN):
                items.append(RoomEvent(stored.id, stored.kind, stored.username))
        return items, cursor, len(batch) == REPLAY_BATCH

    def stream_items(
        self, start: StreamStart, keepalive: float, closed: Callable[[], bool] | None = None
    ) -> Iterator[StreamItem]:
        """The items of a started stream, for one listener (see `follow`)."""
        roomid, cursor = start.roomid, start.cursor
        closed = closed or _never
        with self.signals.listening(roomid), self.present(start) as present:
            generation = self.signals.generation(roomid)
            shown, names = self.presence.current(roomid)
            yield Presence(list(names))
            next_keepalive = time.monotonic() + keepalive
            while True:
                items, cursor, more = self.read_after(roomid, cursor, generation)
                for item in items:
                    yield item
                    if isinstance(item, RoomEvent) and item.kind == GONE:
                        present.room_gone = True
                        return
                if items:
                    next_keepalive = time.monotonic() + keepalive
                if more:
                    continue
                self.presence.refresh(roomid)  # may change by expiry or elsewhere
                shown, change = self.presence.since(roomid, shown)
                now = time.monotonic()
                if change is not None:
                    next_keepalive = now + keepalive
                    yield change
                if now >= next_keepalive:
                    next_keepalive = now + keepalive
                    yield None
                wake_at = min(next_keepalive, now + presence.PRESENCE_CHECK)
                generation = self.signals.wait(roomid, generation, wake_at - time.monotonic())
                if closed():
                    return

    def _message(self, stored: StoredMessage) -> Message:
        """The message with its line; formatting a time is the costly part of
        reading history, so recent results are kept."""
        message = self._formatted.get(stored)
        if message is None:
            message = self._format(stored)
            self._formatted.put(stored, message)
        return message

    def _format(self, stored: StoredMessage) -> Message:
        line = rules.format_line(stored.posted_at, stored.username, stored.text, self.tz)
        return Message(stored.id, stored.posted_at, stored.username, stored.text, line)

    def _display_name(self, roomid: str, key: str) -> str:
        """The name as registered; names never change, so each is read once."""
        name = self._names.get((roomid, key))
        if name is None:
            user = self.backend.get_user(roomid, key)
            if user is None:  # the account is gone: treat as logged out
                raise AuthenticationFailed(NOT_LOGGED_IN)
            name = user.username
            self._names.put((roomid, key), name)
        return name

    def _messages_after(
        self, roomid: str, cursor: str | None, generation: int
    ) -> list[StoredMessage]:
        """What listeners of one room read when they wake together: the first of
        them asks the backend, the others at the same cursor share its answer
        for a moment."""
        now = time.monotonic()
        shared = self._wakeups.get(roomid)
        if (
            shared is not None
            and shared.cursor == cursor
            and shared.generation == generation
            and now - shared.read_at < SHARED_READ_AGE
        ):
            return shared.batch
        batch = self.backend.events_after(roomid, cursor, REPLAY_BATCH)
        # Only the latest read of a room is kept: live listeners share one cursor.
        self._wakeups.put(roomid, SharedRead(cursor, generation, now, batch))
        return batch

    # Whole store

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The seed's nested structure, every message included, without secrets."""
        result: dict[str, dict[str, Any]] = {}
        for roomid in self.backend.room_ids():
            dump = self.backend.dump_room(roomid)
            result[roomid] = {
                "users": {user.username: {} for user in dump.users.values()},
                "messages": [self._message(m).line for m in dump.messages],
                "alias": dump.alias,
            }
        return result

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the backend can write now: a store that
        answers reads but refuses writes (read-only, full) is not healthy."""
        self.backend.ping()

    def close(self) -> None:
        self.backend.close()
