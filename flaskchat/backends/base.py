"""The small protocol between `RoomStore` and where the data lives.

A backend stores and fetches; it enforces no rules (the store has already applied
them) except those that must be atomic where the data is: a name key is taken
once per room, a room never holds more accounts than its cap, and a `client_id`
is stored once per user and room.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Protocol

from ..errors import InvalidInput


class Unset(Enum):
    """Marks an argument not given, where None is a value."""

    UNSET = "unset"


UNSET = Unset.UNSET


def parse_sequence_id(message_id: str) -> int:
    """Memory and SQLite ids are decimal sequence numbers; anything else that
    comes back as a cursor is a client's mistake."""
    if not (message_id.isascii() and message_id.isdigit() and len(message_id) <= 18):
        raise InvalidInput("That is not a message id of this room.")
    return int(message_id)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """An account as stored: the name as shown and its scrypt hash."""

    username: str
    password_hash: str


class AddedUser(Enum):
    """What `Backend.add_user` did: the account is stored only when ADDED."""

    ADDED = "added"
    NAME_TAKEN = "name taken"
    ROOM_FULL = "room full"


# The kinds of entry in a room's log besides messages (DESIGN 1.3): a moderation
# action is appended after what it acts on, never written over it.
DELETE, BAN, UNBAN, TRIM, GONE = "delete", "ban", "unban", "trim", "gone"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """An entry of a room's log. `id` is opaque to clients and increases within a
    room. Most entries are messages; the others are events: "delete" (`target`:
    the id of the message it removed), "ban" / "unban" (`username`: whom),
    "trim" (retention removed older messages) and "gone" (the room was deleted)."""

    id: str
    posted_at: datetime
    username: str
    text: str
    kind: str = "message"
    target: str | None = None


@dataclass(slots=True)
class RoomSettings:
    """What the room's owner controls. `owner_digest` is the SHA-256 of the owner
    key ("" for a room made before rooms had owners); `banned` maps name keys
    to the names as shown."""

    owner_digest: str = ""
    registration_open: bool = True
    retention_days: int | None = None
    banned: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RoomDump:
    """Everything a room holds, secrets included: what `store copy` moves."""

    roomid: str
    alias: str
    users: dict[str, UserRecord] = field(default_factory=dict)
    tokens: dict[str, list[str]] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)
    settings: RoomSettings = field(default_factory=RoomSettings)


class Backend(Protocol):
    """What `RoomStore` needs from storage. `roomid` always names an existing room
    unless a method says otherwise; `key` is the case-folded username."""

    def create_room(self, roomid: str, alias: str, owner_digest: str = "") -> bool:
        """Store a new room; False if the id is taken, or was by a removed room."""

    def room_alias(self, roomid: str) -> str | None:
        """The alias, or None when no such room exists (or it was removed)."""

    def room_settings(self, roomid: str) -> RoomSettings: ...

    def update_settings(
        self,
        roomid: str,
        *,
        owner_digest: str | None = None,
        registration_open: bool | None = None,
        retention_days: int | Unset | None = UNSET,
    ) -> None:
        """Change the settings given; the others stay as they are."""

    def set_ban(self, roomid: str, key: str, username: str | None) -> bool:
        """Ban `key` (shown as `username`), or lift its ban when `username` is
        None; False when nothing changed."""

    def add_user(self, roomid: str, key: str, user: UserRecord, max_users: int) -> AddedUser:
        """Store an account unless `key` is taken or the room already holds
        `max_users`, checked in the same step as the write: registrations that
        race past the store's early count still stop at the cap."""

    def get_user(self, roomid: str, key: str) -> UserRecord | None: ...

    def count_users(self, roomid: str) -> int: ...

    def add_token(self, roomid: str, key: str, digest: str, keep: int) -> None:
        """Store a token digest, then forget the user's oldest ones beyond `keep`."""

    def token_digests(self, roomid: str, key: str) -> list[str]:
        """Digests of the user's live tokens, oldest first, to be compared in
        constant time."""

    def remove_token(self, roomid: str, key: str, digest: str) -> bool: ...

    def remove_tokens(self, roomid: str, key: str) -> None:
        """Log the user out of every device."""

    def append_message(
        self,
        roomid: str,
        key: str,
        username: str,
        text: str,
        posted_at: datetime,
        client_id: str | None,
    ) -> tuple[StoredMessage, bool]:
        """Store a message; with a `client_id` already used by this user in this
        room, store nothing and return the first copy with False. The time
        recorded is taken as the row is written (by the server's clock, or
        Redis's), so times never go backwards along ids."""

    def append_event(
        self, roomid: str, kind: str, username: str = "", target: str | None = None
    ) -> StoredMessage:
        """Append a moderation event (not a message) to the room's log."""

    def message_author(self, roomid: str, message_id: str) -> str | None:
        """The name key of whoever wrote the message, None if there is no such
        message (or it was deleted). Raises `InvalidInput` for a malformed id."""

    def delete_message(self, roomid: str, message_id: str) -> StoredMessage | None:
        """Remove a message, its text included, and append a "delete" event for
        it, which is returned; None (and nothing changed) if there is no such
        message."""

    def purge_before(self, roomid: str, cutoff: datetime) -> int:
        """Remove for good every entry older than `cutoff`, then append a "trim"
        event if anything went; returns how many messages went."""

    def recent_messages(self, roomid: str, limit: int) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first. Here and in
        `messages_before` and `messages_after`, only messages: no events."""

    def messages_before(self, roomid: str, before: str, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages just older than id `before`, oldest first.
        Raises `InvalidInput` if `before` is not an id of this backend's form."""

    def messages_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages just newer than id `after` (from the first one
        when None), oldest first. Raises `InvalidInput` for a malformed id."""

    def events_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        """Like `messages_after`, with the events between them: what streams send."""

    def latest_message_id(self, roomid: str) -> str | None:
        """The id of the newest entry of the log, message or event: whether
        anything changed in the room."""

    def count_messages(self, roomid: str) -> int: ...

    def wait_for_messages(self, roomids: Collection[str], timeout: float) -> set[str]:
        """Block up to `timeout` seconds until any process may have added messages
        to any of `roomids`; return those rooms (a superset is allowed)."""

    def add_ticket(
        self, roomid: str, digest: str, username: str, expires_at: float, session: str
    ) -> None:
        """Store a single-use stream ticket (as its digest) until `expires_at`,
        issued to the login `session` (the digest of the token that asked)."""

    def take_ticket(self, roomid: str, digest: str, now: float) -> tuple[str, str] | None:
        """Atomically remove a ticket; its username and session if it existed and
        was still valid (a ticket stored without a session gives "")."""

    def set_presence(
        self, roomid: str, stream: str, username: str, expires_at: float, session: str
    ) -> None:
        """Say that `username` listens on `stream`, opened by `session`, until
        `expires_at`; entries that have expired are removed for good."""

    def renew_presence(
        self, roomid: str, streams: Sequence[tuple[str, str, str]], expires_at: float
    ) -> None:
        """Move the expiry of each `(stream, username, session)` that still has a
        presence to `expires_at`, in one write; one that a logout or a ban ended
        stays ended. Expired entries are removed for good."""

    def end_presence(self, roomid: str, session: str) -> None:
        """Remove at once the presence of every stream that `session` opened."""

    def end_presence_of(self, roomid: str, username: str) -> None:
        """Remove at once the presence of every stream of `username`."""

    def online(self, roomid: str, now: float) -> list[str]:
        """Names with a presence that has not expired, sorted."""

    def room_ids(self) -> Iterator[str]: ...

    def dump_room(self, roomid: str) -> RoomDump: ...

    def delete_room(self, roomid: str) -> None:
        """Remove a room and everything in it, leaving no mark: `store copy
        --replace` then writes it anew under the same id."""

    def remove_room(self, roomid: str) -> None:
        """Remove a room and everything in it for good: its id is never used
        again, and its log keeps only a "gone" event, so that listeners in
        every process learn of it."""

    def restore_room(self, dump: RoomDump) -> None:
        """Write a dumped room, secrets as stored, messages in order under ids of
        this backend's own form. The room must not exist here yet."""

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the storage can write now, by a small
        write of its own; cheap, since monitors ask every few seconds."""

    def close(self) -> None: ...
