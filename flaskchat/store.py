"""`RoomStore`: the service that owns rooms, accounts and messages.

Pure Python (no Flask): a script, a CLI command or a test uses it exactly as the
web views do. Every rule of DESIGN.md section 2 is applied here, through `rules`,
before anything reaches a backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from . import rules
from .backends import Backend, StoredMessage, UserRecord, open_backend
from .errors import AuthenticationFailed, InvalidInput, RoomNotFound, UsernameTaken

BAD_LOGIN = "Unknown username or wrong password."
NOT_LOGGED_IN = "You are not logged in (or your session has ended). Please log in again."


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message with its seed line, formatted in the store's time zone."""

    id: str
    posted_at: datetime
    username: str
    text: str
    line: str


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
    ) -> None:
        if backend is None:
            backend = open_backend("memory://")
        self.backend = backend
        self.tz = rules.parse_timezone(timezone_name)
        self.conversation_limit = conversation_limit
        self.max_message_length = max_message_length
        # Rooms are never deleted and their alias never changes, so a room seen once
        # can be answered from memory ever after.
        self._aliases: dict[str, str] = {}

    @classmethod
    def from_url(
        cls, url: str, *, instance_path: str | os.PathLike[str] | None = None, **options: Any
    ) -> RoomStore:
        """Open the backend named by `url`; relative SQLite paths land in `instance_path`."""
        return cls(open_backend(url, instance_path), **options)

    # Rooms

    def create_room(self, alias: str) -> str:
        alias = rules.clean_alias(alias)
        while True:
            roomid = rules.new_roomid()
            if self.backend.create_room(roomid, alias):
                self._aliases[roomid] = alias
                return roomid

    def alias(self, roomid: str) -> str:
        """The room's alias; raises `RoomNotFound`, so it doubles as the existence check."""
        alias = self._aliases.get(roomid)
        if alias is not None:
            return alias
        if not rules.looks_like_roomid(roomid):
            raise RoomNotFound()
        alias = self.backend.room_alias(roomid)
        if alias is None:
            raise RoomNotFound()
        self._aliases[roomid] = alias
        return alias

    # Accounts

    def register(self, roomid: str, username: str, password: str) -> str:
        """Create an account; returns the name as the room will show it."""
        self.alias(roomid)
        username = rules.clean_username(username)
        rules.check_password(password)
        user = UserRecord(username, generate_password_hash(password))
        if not self.backend.add_user(roomid, username.casefold(), user):
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
        if user is None or key is None:
            check_password_hash(self._dummy_hash, password)
            raise AuthenticationFailed(BAD_LOGIN)
        if not check_password_hash(user.password_hash, password):
            raise AuthenticationFailed(BAD_LOGIN)
        token = rules.new_token()
        self.backend.add_token(roomid, key, rules.token_digest(token))
        return token

    def logout(self, roomid: str, username: str, token: str) -> None:
        """Revoke one token; the user's other devices stay logged in."""
        key = self._authenticate(roomid, username, token)
        self.backend.remove_token(roomid, key, rules.token_digest(token))

    def _authenticate(self, roomid: str, username: str, token: str) -> str:
        """Return the user's key if `token` is one of their live tokens."""
        self.alias(roomid)
        try:
            key = rules.username_key(username)
        except InvalidInput:
            raise AuthenticationFailed(NOT_LOGGED_IN) from None
        digests = self.backend.token_digests(roomid, key)
        if not rules.digest_matches(rules.token_digest(token), digests):
            raise AuthenticationFailed(NOT_LOGGED_IN)
        return key

    @cached_property
    def _dummy_hash(self) -> str:
        return generate_password_hash(rules.new_token())

    # Messages

    def post_message(
        self, roomid: str, username: str, token: str, text: str, client_id: str | None = None
    ) -> Message:
        """Store a message from a logged-in user. A retry with the same `client_id`
        returns the first copy and stores nothing."""
        key = self._authenticate(roomid, username, token)
        text = rules.clean_message(text, self.max_message_length)
        client_id = rules.clean_client_id(client_id)
        user = self.backend.get_user(roomid, key)
        if user is None:  # account vanished between the two reads: treat as logged out
            raise AuthenticationFailed(NOT_LOGGED_IN)
        stored, _ = self.backend.append_message(
            roomid, key, user.username, text, datetime.now(UTC), client_id
        )
        return self._message(stored)

    def conversation(self, roomid: str, limit: int | None = None) -> list[str]:
        """The seed's `get_conversation`: the last lines, oldest first."""
        self.alias(roomid)
        limit = self.conversation_limit if limit is None else limit
        return [self._message(m).line for m in self.backend.recent_messages(roomid, limit)]

    def _message(self, stored: StoredMessage) -> Message:
        line = rules.format_line(stored.posted_at, stored.username, stored.text, self.tz)
        return Message(stored.id, stored.posted_at, stored.username, stored.text, line)

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
        """Raise `StoreUnavailable` unless the backend answers."""
        self.backend.ping()

    def close(self) -> None:
        self.backend.close()
