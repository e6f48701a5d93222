"""The small protocol between `RoomStore` and where the data lives.

A backend stores and fetches; it enforces no rules (the store has already applied
them) except those that must be atomic where the data is: a name key is taken
once per room, a room never holds more accounts than its cap, and a `client_id`
is stored once per user and room.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Protocol

from ..errors import InvalidInput


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


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored. `id` is opaque to clients and increases within a room."""

    id: str
    posted_at: datetime
    username: str
    text: str


@dataclass(slots=True)
class RoomDump:
    """Everything a room holds, secrets included: what `store copy` moves."""

    roomid: str
    alias: str
    users: dict[str, UserRecord] = field(default_factory=dict)
    tokens: dict[str, list[str]] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)


class Backend(Protocol):
    """What `RoomStore` needs from storage. `roomid` always names an existing room
    unless a method says otherwise; `key` is the case-folded username."""

    def create_room(self, roomid: str, alias: str) -> bool:
        """Store a new room; False if the id is already taken."""

    def room_alias(self, roomid: str) -> str | None:
        """The alias, or None when no such room exists."""

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

    def recent_messages(self, roomid: str, limit: int) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first."""

    def messages_before(self, roomid: str, before: str, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages just older than id `before`, oldest first.
        Raises `InvalidInput` if `before` is not an id of this backend's form."""

    def messages_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages just newer than id `after` (from the first one
        when None), oldest first. Raises `InvalidInput` for a malformed id."""

    def latest_message_id(self, roomid: str) -> str | None: ...

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

    def end_presence(self, roomid: str, session: str) -> None:
        """Remove at once the presence of every stream that `session` opened."""

    def online(self, roomid: str, now: float) -> list[str]:
        """Names with a presence that has not expired, sorted."""

    def room_ids(self) -> Iterator[str]: ...

    def dump_room(self, roomid: str) -> RoomDump: ...

    def delete_room(self, roomid: str) -> None:
        """Remove a room and everything in it (only `store copy --replace` does)."""

    def restore_room(self, dump: RoomDump) -> None:
        """Write a dumped room, secrets as stored, messages in order under ids of
        this backend's own form. The room must not exist here yet."""

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the storage can write now, by a small
        write of its own; cheap, since monitors ask every few seconds."""

    def close(self) -> None: ...
