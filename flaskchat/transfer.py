"""Moving every room from one store to another (`flask store copy`)."""

from __future__ import annotations

from dataclasses import dataclass

from .backends import Backend


class DestinationNotEmpty(Exception):
    """The destination already holds rooms and replacing them was not asked for."""


@dataclass(frozen=True, slots=True)
class CopyReport:
    rooms: int
    users: int
    messages: int


def copy_rooms(source: Backend, destination: Backend, *, replace: bool = False) -> CopyReport:
    """Copy every room, account (password hashes and token digests as stored, so
    nobody has to log in again) and message, in order.

    Messages get ids of the destination's own form, in the same order; clients
    holding an old id as a stream cursor reload the room. A destination that
    already has rooms is refused unless `replace`, which replaces rooms with the
    same id and keeps the others.
    """
    existing = set(destination.room_ids())
    if existing and not replace:
        raise DestinationNotEmpty(
            f"The destination already holds {len(existing)} room(s); refusing to overwrite."
        )
    rooms = users = messages = 0
    for roomid in source.room_ids():
        dump = source.dump_room(roomid)
        if roomid in existing:
            destination.delete_room(roomid)
        destination.restore_room(dump)
        rooms, users, messages = rooms + 1, users + len(dump.users), messages + len(dump.messages)
    return CopyReport(rooms, users, messages)
