"""`memory://`: the seed's nested dict, behind one lock.

Lives in one process only: several gunicorn workers would each have their own
rooms. For tests, demos and scripts.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from .base import (
    DELETE,
    GONE,
    TRIM,
    UNSET,
    AddedUser,
    RoomDump,
    RoomSettings,
    StoredMessage,
    Unset,
    UserRecord,
    parse_sequence_id,
)


def _drop_expired(entries: dict[str, tuple[str, float, str]], now: float) -> None:
    """Remove (username, expires_at, session) entries whose time has passed."""
    for stale in [key for key, entry in entries.items() if entry[1] <= now]:
        del entries[stale]


class MemoryBackend:
    """Shape of `rooms` (the seed's, with secrets hashed)::

        {roomid: {"alias": str (None once removed),
                  "settings": RoomSettings,
                  "users": {key: {"user": UserRecord, "tokens": {digest: None}}},
                  "log": [StoredMessage, ...] (messages and events, by id),
                  "last_id": int (the room's own count: ids say nothing
                              of other rooms, and never go back),
                  "client_ids": {(key, client_id): StoredMessage},
                  "tickets": {digest: (username, expires_at, session)},
                  "presence": {stream: (username, expires_at, session)}}}

    A removed room keeps its id, an empty shape and a "gone" event. Every
    public method takes `_lock` for its whole body, so each is atomic.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rooms: dict[str, dict[str, Any]] = {}
        # Rooms that gained messages since the watcher last asked, and the
        # condition it waits on (sharing `_lock`), so listeners wake at once.
        self._changed: set[str] = set()
        self._appended = threading.Condition(self._lock)

    def create_room(self, roomid: str, alias: str, owner_digest: str = "") -> bool:
        with self._lock:
            if roomid in self._rooms:
                return False
            self._rooms[roomid] = self._new_room(alias, RoomSettings(owner_digest))
            return True

    @staticmethod
    def _new_room(alias: str | None, settings: RoomSettings) -> dict[str, Any]:
        return {
            "alias": alias,
            "settings": settings,
            "users": {},
            "log": [],
            "last_id": 0,
            "authors": {},
            "client_ids": {},
            "tickets": {},
            "presence": {},
        }

    def room_alias(self, roomid: str) -> str | None:
        with self._lock:
            room = self._rooms.get(roomid)
            return None if room is None else room["alias"]

    def room_settings(self, roomid: str) -> RoomSettings:
        with self._lock:
            settings: RoomSettings = self._rooms[roomid]["settings"]
            return RoomSettings(
                settings.owner_digest,
                settings.registration_open,
                settings.retention_days,
                dict(settings.banned),
            )

    def update_settings(
        self,
        roomid: str,
        *,
        owner_digest: str | None = None,
        registration_open: bool | None = None,
        retention_days: int | Unset | None = UNSET,
    ) -> None:
        with self._lock:
            settings: RoomSettings = self._rooms[roomid]["settings"]
            if owner_digest is not None:
                settings.owner_digest = owner_digest
            if registration_open is not None:
                settings.registration_open = registration_open
            if not isinstance(retention_days, Unset):
                settings.retention_days = retention_days

    def set_ban(self, roomid: str, key: str, username: str | None) -> bool:
        with self._lock:
            banned: dict[str, str] = self._rooms[roomid]["settings"].banned
            if username is None:
                return banned.pop(key, None) is not None
            if key in banned:
                return False
            banned[key] = username
            return True

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

    def remove_tokens(self, roomid: str, key: str) -> None:
        with self._lock:
            entry = self._rooms[roomid]["users"].get(key)
            if entry is not None:
                entry["tokens"].clear()

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
            message = self._append(roomid, posted_at, username, text)
            room["authors"][message.id] = key
            if client_id is not None:
                room["client_ids"][key, client_id] = message
            return message, True

    def _append(
        self,
        roomid: str,
        posted_at: datetime,
        username: str,
        text: str,
        kind: str = "message",
        target: str | None = None,
    ) -> StoredMessage:
        """Add an entry to the room's log and wake the watcher; caller holds `_lock`."""
        room = self._rooms[roomid]
        room["last_id"] += 1
        posted_at = max(posted_at, datetime.now(UTC))  # stamped under the lock
        entry = StoredMessage(str(room["last_id"]), posted_at, username, text, kind, target)
        room["log"].append(entry)
        self._changed.add(roomid)
        self._appended.notify_all()
        return entry

    def append_event(
        self, roomid: str, kind: str, username: str = "", target: str | None = None
    ) -> StoredMessage:
        with self._lock:
            return self._append(roomid, datetime.now(UTC), username, "", kind, target)

    def message_author(self, roomid: str, message_id: str) -> str | None:
        wanted = parse_sequence_id(message_id)
        with self._lock:
            found = self._find(roomid, wanted)
            if found is None:
                return None
            author: str = self._rooms[roomid]["authors"][found.id]
            return author

    def _find(self, roomid: str, wanted: int) -> StoredMessage | None:
        """The message with id `wanted`; caller holds `_lock`."""
        log: list[StoredMessage] = self._rooms[roomid]["log"]
        at = bisect.bisect_left(log, wanted, key=lambda m: int(m.id))
        if at < len(log) and int(log[at].id) == wanted and log[at].kind == "message":
            return log[at]
        return None

    def delete_message(self, roomid: str, message_id: str) -> StoredMessage | None:
        wanted = parse_sequence_id(message_id)
        with self._lock:
            found = self._find(roomid, wanted)
            if found is None:
                return None
            room = self._rooms[roomid]
            room["log"].remove(found)
            del room["authors"][found.id]
            room["client_ids"] = {k: m for k, m in room["client_ids"].items() if m is not found}
            return self._append(roomid, datetime.now(UTC), "", "", DELETE, found.id)

    def purge_before(self, roomid: str, cutoff: datetime) -> int:
        with self._lock:
            room = self._rooms[roomid]
            old = [m for m in room["log"] if m.posted_at < cutoff]
            if not old:
                return 0
            room["log"] = [m for m in room["log"] if m.posted_at >= cutoff]
            gone = {m.id for m in old}
            room["authors"] = {i: k for i, k in room["authors"].items() if i not in gone}
            room["client_ids"] = {k: m for k, m in room["client_ids"].items() if m.id not in gone}
            self._append(roomid, datetime.now(UTC), "", "", TRIM)
            return sum(m.kind == "message" for m in old)

    def _messages(self, roomid: str) -> list[StoredMessage]:
        """The room's messages, without events; caller holds `_lock`."""
        return [m for m in self._rooms[roomid]["log"] if m.kind == "message"]

    def recent_messages(self, roomid: str, limit: int) -> list[StoredMessage]:
        with self._lock:
            return self._messages(roomid)[-limit:] if limit > 0 else []

    def messages_before(self, roomid: str, before: str, limit: int) -> list[StoredMessage]:
        cut = parse_sequence_id(before)
        with self._lock:
            messages = self._messages(roomid)
            end = bisect.bisect_left(messages, cut, key=lambda m: int(m.id))
            return messages[max(end - limit, 0) : end] if limit > 0 else []

    def messages_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        return self._after(roomid, after, limit, messages_only=True)

    def events_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        return self._after(roomid, after, limit, messages_only=False)

    def _after(
        self, roomid: str, after: str | None, limit: int, *, messages_only: bool
    ) -> list[StoredMessage]:
        cut = 0 if after is None else parse_sequence_id(after)
        with self._lock:
            log = self._messages(roomid) if messages_only else self._rooms[roomid]["log"]
            start = bisect.bisect_right(log, cut, key=lambda m: int(m.id))
            return list(log[start : start + max(limit, 0)])

    def latest_message_id(self, roomid: str) -> str | None:
        with self._lock:
            log = self._rooms[roomid]["log"]
            return log[-1].id if log else None

    def count_messages(self, roomid: str) -> int:
        with self._lock:
            return len(self._messages(roomid))

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

    def renew_presence(
        self, roomid: str, streams: Sequence[tuple[str, str, str]], expires_at: float
    ) -> None:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            _drop_expired(presence, time.time())
            for stream, _, _ in streams:
                if stream in presence:
                    username, _, session = presence[stream]
                    presence[stream] = (username, expires_at, session)

    def end_presence(self, roomid: str, session: str) -> None:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            for stream in [s for s, entry in presence.items() if entry[2] == session]:
                del presence[stream]

    def end_presence_of(self, roomid: str, username: str) -> None:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            for stream in [s for s, entry in presence.items() if entry[0] == username]:
                del presence[stream]

    def online(self, roomid: str, now: float) -> list[str]:
        with self._lock:
            presence = self._rooms[roomid]["presence"]
            _drop_expired(presence, now)
            return sorted({entry[0] for entry in presence.values()})

    def room_ids(self) -> Iterator[str]:
        with self._lock:
            ids = [roomid for roomid, room in self._rooms.items() if room["alias"] is not None]
        return iter(ids)

    def dump_room(self, roomid: str) -> RoomDump:
        with self._lock:
            room = self._rooms[roomid]
            return RoomDump(
                roomid=roomid,
                alias=room["alias"],
                users={key: entry["user"] for key, entry in room["users"].items()},
                tokens={key: list(entry["tokens"]) for key, entry in room["users"].items()},
                messages=self._messages(roomid),
                settings=room["settings"],
            )

    def delete_room(self, roomid: str) -> None:
        with self._lock:
            self._rooms.pop(roomid, None)

    def remove_room(self, roomid: str) -> None:
        with self._lock:
            last_id = self._rooms[roomid]["last_id"]
            self._rooms[roomid] = self._new_room(None, RoomSettings())
            self._rooms[roomid]["last_id"] = last_id  # "gone" comes after everything
            self._append(roomid, datetime.now(UTC), "", "", GONE)

    def restore_room(self, dump: RoomDump) -> None:
        self.create_room(dump.roomid, dump.alias)
        for key, user in dump.users.items():
            self.add_user(dump.roomid, key, user, max_users=len(dump.users))
            for digest in dump.tokens.get(key, []):
                self.add_token(dump.roomid, key, digest, keep=len(dump.tokens[key]))
        with self._lock:
            room = self._rooms[dump.roomid]
            room["settings"] = dump.settings
            for message in dump.messages:
                room["last_id"] += 1
                stored = StoredMessage(
                    str(room["last_id"]), message.posted_at, message.username, message.text
                )
                room["log"].append(stored)
                room["authors"][stored.id] = message.username.casefold()

    def ping(self) -> None:
        """Memory can always write."""

    def close(self) -> None:
        return None
