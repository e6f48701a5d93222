"""Moving rooms between stores, backing a store up and checking one
(`flask store copy`, `backup` and `check`)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .backends import Backend
from .backends.sqlite import SqliteBackend

# Files SQLite keeps beside a database while it is open or after a crash, and the
# counters of the fsyncs its writers share (see `backends.sqlite_sync`).
COMPANIONS = ("-wal", "-shm", "-journal", "-sync")


class DestinationNotEmpty(Exception):
    """The destination already holds rooms and replacing them was not asked for."""


@dataclass(frozen=True, slots=True)
class CopyReport:
    rooms: int
    users: int
    messages: int


@dataclass(slots=True)
class CheckReport:
    """What `check_store` found: counts, and each problem as a sentence."""

    rooms: int = 0
    users: int = 0
    messages: int = 0
    problems: list[str] = field(default_factory=list)


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
        if source.room_alias(roomid) is None:
            continue  # removed since it was listed (or damaged: `store check` says so)
        dump = source.dump_room(roomid)
        if roomid in existing:
            destination.delete_room(roomid)
        destination.restore_room(dump)
        rooms, users, messages = rooms + 1, users + len(dump.users), messages + len(dump.messages)
    return CopyReport(rooms, users, messages)


def sqlite_file(url: str, instance_path: str | os.PathLike[str]) -> Path | None:
    """The file that a `sqlite:///` store URL names, resolved as `open_backend`
    resolves it; None for other URLs."""
    name = url.removeprefix("sqlite:///")
    if name == url or not name:
        return None
    return Path(instance_path, name)  # an absolute name stays as it is


@contextlib.contextmanager
def new_sqlite_file(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` to write a SQLite database under. Only once
    the block succeeds is the file made a single self-contained file and moved
    to `path`; otherwise it is removed. No half-made file is ever at `path`.

    An existing `path` is refused unless `replace`, and even then while SQLite
    journal files lie beside it (a server may have it open, and a stale journal
    would be applied to the new file)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "There is no such folder", str(path.parent))
    if path.exists() and not replace:
        raise FileExistsError(errno.EEXIST, "The file exists already", str(path))
    for suffix in COMPANIONS[0], COMPANIONS[2]:
        if Path(f"{path}{suffix}").exists():
            raise FileExistsError(
                errno.EEXIST, "SQLite's journal lies beside it: is it in use?", f"{path}{suffix}"
            )
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield draft
        _seal(draft)
        if replace:
            os.replace(draft, path)
        else:
            os.link(draft, path)  # fails if a file appeared there meanwhile
        _sync_folder(path.parent)
    finally:
        for name in (str(draft), *(f"{draft}{suffix}" for suffix in COMPANIONS)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _seal(path: Path) -> None:
    """Leave WAL mode (which checkpoints everything into the file) and flush the
    file to disk: a backup is one file that needs nothing beside it."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def backup_store(
    source: Backend, path: str | os.PathLike[str], *, replace: bool = False
) -> CheckReport:
    """Write a copy of `source`, which servers may go on writing to meanwhile,
    into the new SQLite file `path`, and check the copy before it is put there.
    A SQLite store is copied whole, as one snapshot, by SQLite's online backup
    API; any other store room by room, each room as it stood when it was read."""
    if isinstance(source, SqliteBackend) and _same_file(source.path, Path(path)):
        raise ValueError(f"{path} is the store itself: back it up to another file.")
    with new_sqlite_file(path, replace=replace) as draft:
        if isinstance(source, SqliteBackend):
            source.backup(draft)
        copy = SqliteBackend(draft)
        try:
            if not isinstance(source, SqliteBackend):
                copy_rooms(source, copy)
            return check_store(copy)
        finally:
            copy.close()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_store(backend: Backend) -> CheckReport:
    """Read every room, account count and message of `backend` and say what is
    wrong: a room listed without its alias (Redis) and, on SQLite, anything
    that `PRAGMA integrity_check` or `foreign_key_check` finds."""
    report = CheckReport()
    if isinstance(backend, SqliteBackend):
        report.problems.extend(sqlite_problems(backend.path))
        if report.problems:
            return report  # counts from a damaged file would mislead
    for roomid in backend.room_ids():
        report.rooms += 1
        if backend.room_alias(roomid) is None:
            report.problems.append(f"room {roomid} is listed but has no alias")
            continue
        report.users += backend.count_users(roomid)
        cursor: str | None = None
        while batch := backend.messages_after(roomid, cursor, 1000):
            report.messages += len(batch)
            cursor = batch[-1].id
    return report


def sqlite_problems(path: str | os.PathLike[str]) -> list[str]:
    """What SQLite finds wrong with the database file at `path`, read-only."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            keys = conn.execute("PRAGMA foreign_key_check").fetchall()
        except sqlite3.DatabaseError as error:  # too damaged to say more
            return [str(error)]
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    problems.extend(
        f"a row of {table} refers to a missing row of {parent}" for table, _, parent, _ in keys
    )
    return problems
