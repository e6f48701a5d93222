"""`memory://`: the seed's nested dict, behind one lock.

Lives in one process only: several gunicorn workers would each have their own
rooms. For tests, demos and scripts.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any

from .base import AddedUser, RoomDump, StoredMessage, UserRecord, parse_sequence_id


def _drop_expired(entries: dict[str, tuple[str, float, str]], now: float) -> None:
    """Remove (username, expires_at, session) entries whose time has passed."""
    for stale in [key for key, entry in entries.items() if entry[1] <= now]:
        del entries[stale]


class MemoryBackend:
    """Shape of `rooms` (the seed's, with secrets hashed)::

        {roomid: {"alias": str,
                  "users": {key: {"user": UserRecord, "tokens": {digest: None}}},
                  "messages": [StoredMessage, ...],
                  "client_ids": {(key, client_id): StoredMessage},
                  "tickets": {digest: (username, expires_at, session)},
                  "presence": {stream: (username, expires_at, session)}}}

    Every public method takes `_lock` for its whole body, so each is atomic.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rooms: dict[str, dict[str, Any]] = {}
        self._last_id = 0
        # Rooms that gained messages since the watcher last asked, and the
        # condition it waits on (sharing `_lock`), so listeners wake at once.
        self._changed: set[str] = set()
        self._appended = threading.Condition(self._lock)

    def create_room(self, roomid: str, alias: str) -> bool:
        with self._lock:
            if roomid in self._rooms:
                return False
            self._rooms[roomid] = {
                "alias": alias,
                "users": {},
                "messages": [],
                "client_ids": {},
                "tickets": {},
                "presence": {},
            }
            return True

    def room_alias(self, roomid: str) -> str | None:
        with self._lock:
            room = self._rooms.get(roomid)
            return None if room is None else str(room["alias"])

    def add_user(self, roomid: str, key: str, user: UserRecord, max_users: int) -> AddedUser:
        with self._lock:
            users = self._rooms[roomid]["users"]
            if len(users) >= max_users:
                return AddedUser.ROOM_FULL
            if key in users:
                return AddedUser.NAME_TAKEN
            users[key] = {"user": user, "tokens": {}}
            return AddedUser.ADDED

    def get_user(self, roomid: str, key: str) -> UserRecord | None:
        with self._lock:
            entry = self._rooms[roomid]["users"].get(key)
            return None if entry is None else entry["user"]

    def count_users(self, roomid: str) -> int:
        with self._lock:
            return len(self._rooms[roomid]["users"])

    def add_token(self, roomid: str, key: str, digest: str, keep: int) -> None:
        with self._lock:
            tokens: dict[str, None] = self._rooms[roomid]["users"][key]["tokens"]
            tokens[digest] = None  # dicts keep insertion order: oldest first
            for oldest in list(tokens)[: max(len(tokens) - keep, 0)]:
                del tokens[oldest]

    def token_digests(self, roomid: str, key: str) -> list[str]:
        with self._lock:
            entry = self._rooms[roomid]["users"].get(key)
            return [] if entry is None else list(entry["tokens"])

    def remove_token(self, roomid: str, key: str, digest: str) -> bool:
        with self._lock:
            entry = self._rooms[roomid]["users"].get(key)
            if entry is None or digest not in entry["tokens"]:
                return False
            del entry["tokens"][digest]
            return True

    def append_message(
        self,
        roomid: str,
        key: str,
        username: str,
        text: str,
        posted_at: datetime,
        client_id: str | None,
    ) -> tuple[StoredMessage, bool]:
        with self._lock:
            room = self._rooms[roomid]
            if client_id is not None and (key, client_id) in room["client_ids"]:
                return room["client_ids"][key, client_id], False
            self._last_id += 1
            posted_at = max(posted_at, datetime.now(UTC))  # stamped under the lock
            message = StoredMessage(str(self._last_id), posted_at, username, text)
            room["messages"].append(message)
            if client_id is not None:
                room["client_ids"][key, client_id] = message
            self._changed.add(roomid)
            self._appended.notify_all()
            return message, True

    def recent_messages(self, roomid: str, limit: int) -> list[StoredMessage]:
        with self._lock:
            messages: list[StoredMessage] = self._rooms[roomid]["messages"]
            return messages[-limit:] if limit > 0 else []

    def messages_before(self, roomid: str, before: str, limit: int) -> list[StoredMessage]:
        cut = parse_sequence_id(before)
        with self._lock:
            messages: list[StoredMessage] = self._rooms[roomid]["messages"]
            end = bisect.bisect_left(messages, cut, key=lambda m: int(m.id))
            return messages[max(end - limit, 0) : end] if limit > 0 else []

    def messages_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        cut = 0 if after is None else parse_sequence_id(after)
        with self._lock:
            messages: list[StoredMessage] = self._rooms[roomid]["messages"]
            start = bisect.bisect_right(messages, cut, key=lambda m: int(m.id))
            return messages[start : start + max(limit, 0)]

    def latest_message_id(self, roomid: str) -> str | None:
        with self._lock:
            messages = self._rooms[roomid]["messages"]
            return messages[-1].id if messages else None

    def wait_for_messages(self, roomids: Collection[str], timeout: float) -> set[str]:
        """Wait for an append to any of `roomids`. Only this process writes here, so
        an append is the only news. Rooms not asked for keep their mark until
        they are (at most one per room this store holds)."""
        wanted = set(roomids)
        with self._appended:
            self._appended.wait_for(lambda: not self._changed.isdisjoint(wanted), timeout)
            changed = self._changed & wanted
            self._changed -= changed
        return changed

    def add_ticket(
        self, roomid: str, digest: str, username: str, expires_at: float, session: str
    ) -> None:
        with self._lock:
            self._rooms[roomid]["tickets"][digest] = (username, expires_at, session)

    def take_ticket(self, roomid: str, digest: str, now: float) -> tuple[str, str] | None:
        with self._lock:
            tickets = self._rooms[roomid]["tickets"]
            _drop_expired(tickets, now)
            entry = tickets.pop(digest, None)
            return None if entry is None else (entry[0], entry[2])

    def set_presence(
        self, roomid: str, stream: str, username: str, expires_at: float, session: str
    ) -> None:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            _drop_expired(presence, time.time())
            presence[stream] = (username, expires_at, session)

    def end_presence(self, roomid: str, session: str) -> None:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            for stream in [s for s, entry in presence.items() if entry[2] == session]:
                del presence[stream]

    def online(self, roomid: str, now: float) -> list[str]:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            _drop_expired(presence, now)
            return sorted({entry[0] for entry in presence.values()})

    def room_ids(self) -> Iterator[str]:
        with self._lock:
            ids = list(self._rooms)
        return iter(ids)

    def dump_room(self, roomid: str) -> RoomDump:
        with self._lock:
            room = self._rooms[roomid]
            return RoomDump(
                roomid=roomid,
                alias=room["alias"],
                users={key: entry["user"] for key, entry in room["users"].items()},
                tokens={key: list(entry["tokens"]) for key, entry in room["users"].items()},
                messages=list(room["messages"]),
            )

    def delete_room(self, roomid: str) -> None:
        with self._lock:
            self._rooms.pop(roomid, None)

    def restore_room(self, dump: RoomDump) -> None:
        self.create_room(dump.roomid, dump.alias)
        for key, user in dump.users.items():
            self.add_user(dump.roomid, key, user, max_users=len(dump.users))
            for digest in dump.tokens.get(key, []):
                self.add_token(dump.roomid, key, digest, keep=len(dump.tokens[key]))
        with self._lock:
            for message in dump.messages:
                self._last_id += 1
                stored = StoredMessage(
                    str(self._last_id), message.posted_at, message.username, message.text
                )
                self._rooms[dump.roomid]["messages"].append(stored)

    def ping(self) -> None:
        """Memory can always write."""

    def close(self) -> None:
        return None
