"""`sqlite:///file`: the default store, safe for several workers on one machine.

WAL lets readers run beside the writer, and the busy timeout makes workers wait
for each other instead of failing. Writes commit with `synchronous = NORMAL`, so
a COMMIT holds SQLite's one write lock only while it writes its frames to the
WAL, not while the disk flushes them: under `FULL` every worker queued for the
lock behind each fsync. Every write then waits, lock released, for an
`fdatasync` of the WAL that the writers of all processes share (see
`sqlite_sync`), so an acknowledged write still survives power loss and one fsync
covers every commit made while the previous one ran. The schema version lives
in `PRAGMA user_version`; `MIGRATIONS[n]` takes a database from version n to
n + 1.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from ..errors import StoreUnavailable
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
from .sqlite_sync import PatchAwareLock, SharedSync

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
READ_BUSY_TIMEOUT_MS = 50
# How often a watching process looks for commits made by other processes.
WATCH_INTERVAL = 0.02
# Rooms whose newest message id is kept between commits, per process.
LATEST_CACHE_SIZE = 10_000

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        alias TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE users (
        room_id TEXT NOT NULL REFERENCES rooms (id),
        name_key TEXT NOT NULL,
        username TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        PRIMARY KEY (room_id, name_key)
    ) WITHOUT ROWID;
    CREATE TABLE tokens (
        room_id TEXT NOT NULL,
        name_key TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (room_id, name_key, digest),
        FOREIGN KEY (room_id, name_key) REFERENCES users (room_id, name_key)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id TEXT NOT NULL REFERENCES rooms (id),
        name_key TEXT NOT NULL,
        username TEXT NOT NULL,
        body TEXT NOT NULL,
        posted_at_us INTEGER NOT NULL,
        client_id TEXT
    );
    CREATE INDEX messages_by_room ON messages (room_id, id);
    CREATE UNIQUE INDEX messages_by_client_id
        ON messages (room_id, name_key, client_id) WHERE client_id IS NOT NULL;
    """,
    """
    CREATE TABLE tickets (
        digest TEXT PRIMARY KEY,
        room_id TEXT NOT NULL REFERENCES rooms (id),
        username TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tickets_by_expiry ON tickets (expires_at);
    CREATE TABLE presence (
        room_id TEXT NOT NULL REFERENCES rooms (id),
        stream TEXT NOT NULL,
        username TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (room_id, stream)
    ) WITHOUT ROWID;
    """,
    """
    ALTER TABLE tokens ADD COLUMN created_us INTEGER NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE heartbeat (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        beat_us INTEGER NOT NULL
    );
    """,
    # Tickets and presence remember the login session (token digest) that made
    # them, so a logout ends them; expired presence is found by its index.
    """
    ALTER TABLE tickets ADD COLUMN session TEXT NOT NULL DEFAULT '';
    ALTER TABLE presence ADD COLUMN session TEXT NOT NULL DEFAULT '';
    CREATE INDEX presence_by_expiry ON presence (expires_at);
    CREATE INDEX presence_by_session ON presence (room_id, session);
    """,
    # Room owners (DESIGN 1.3): settings and bans, moderation events in the log,
    # and removed rooms kept as ids that are never used again.
    """
    ALTER TABLE rooms ADD COLUMN owner_digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE rooms ADD COLUMN registration_open INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE rooms ADD COLUMN retention_days INTEGER;
    ALTER TABLE rooms ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
    ALTER TABLE messages ADD COLUMN target INTEGER;
    CREATE INDEX messages_by_time ON messages (room_id, posted_at_us);
    CREATE TABLE bans (
        room_id TEXT NOT NULL REFERENCES rooms (id),
        name_key TEXT NOT NULL,
        username TEXT NOT NULL,
        PRIMARY KEY (room_id, name_key)
    ) WITHOUT ROWID;
    """,
    # The id clients see is `seq`, counted per room (`_next_seq`), so that it
    # tells nothing of other rooms' traffic; the rowid `id` stays global for the
    # watcher. Rows written before keep their id as `seq` (every id a client
    # holds stays valid and in order), and each room counts on from its newest.
    """
    ALTER TABLE rooms ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN seq INTEGER;
    UPDATE messages SET seq = id;
    UPDATE rooms SET last_seq =
        COALESCE((SELECT MAX(id) FROM messages WHERE messages.room_id = rooms.id), 0);
    DROP INDEX messages_by_room;
    CREATE UNIQUE INDEX messages_by_seq ON messages (room_id, seq);
    """,
)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

# Errors after which a connection is closed and the next request opens another:
# SQLite opens a file it may not write read-only without a word and keeps it so,
# and after a full disk or an I/O error a fresh connection starts again from the
# file as committed. (Primary result codes: an extended code keeps them in its
# low byte.)
REOPEN_AFTER = frozenset(
    {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN}
)
# Of those, the errors of a file that could not be written as it was opened. The
# map of the `-shm` file that all connections of a process share may then be
# read-only too, so the reader and the watcher let go of it as well. (Not on a
# full disk: a process that closes its last connection maps the file anew, which
# takes room that a full disk does not have, and reads would fail too.)
REMAP_AFTER = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN})
# A store opens despite these, and despite a long write of another process: it
# serves reads, and writes answer 503 until a connection can write.
OPEN_DESPITE = REOPEN_AFTER | {sqlite3.SQLITE_BUSY}


def _result_code(error: BaseException | None) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _reopen_after(error: BaseException | None) -> bool:
    return _result_code(error) in REOPEN_AFTER


def _close(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def begin_immediate(conn: sqlite3.Connection, timeout: float) -> None:
    """Take the write lock, waiting for other processes with short sleeps of our
    own: SQLite's busy handler would sleep in steps of up to 100 ms, and under
    gevent it would stall every connection of the worker while it sleeps."""
    deadline = time.monotonic() + timeout
    pause = 0.0002
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


def _to_us(moment: datetime) -> int:
    return (moment - EPOCH) // MICROSECOND


def _from_us(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


# The columns of a log entry, as `_entry` reads them; `seq` is the id clients see.
ENTRY = "seq, username, body, posted_at_us, kind, target"


def _entry(row: sqlite3.Row | tuple[int, str, str, int, str, int | None]) -> StoredMessage:
    message_id, username, body, posted_at_us, kind, target = row
    return StoredMessage(
        str(message_id),
        _from_us(posted_at_us),
        username,
        body,
        kind,
        None if target is None else str(target),
    )


def _settings(conn: sqlite3.Connection, roomid: str) -> RoomSettings:
    digest, registration_open, retention_days = conn.execute(
        "SELECT owner_digest, registration_open, retention_days FROM rooms WHERE id = ?",
        (roomid,),
    ).fetchone()
    banned = conn.execute(
        "SELECT name_key, username FROM bans WHERE room_id = ? ORDER BY name_key", (roomid,)
    ).fetchall()
    return RoomSettings(digest, bool(registration_open), retention_days, dict(banned))


def _message(row: sqlite3.Row | tuple[int, str, str, int]) -> StoredMessage:
    message_id, username, body, posted_at_us = row
    return StoredMessage(str(message_id), _from_us(posted_at_us), username, body)


class SqliteBackend:
    """Per process, one connection for writes behind a lock (SQLite serialises
    writers anyway, and a lock works the same under threads and gevent) and one
    for reads. Connections are reopened after a fork, so a preloaded app never
    shares one between workers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = PatchAwareLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._remap = False  # the next writer wants the readers opened afresh
        # The fsyncs that make commits durable, shared with the other processes.
        self._sync = SharedSync(self.path)
        # The connection for reads (see `_read`), made on first use in each process.
        self._read_lock = PatchAwareLock()
        self._reader: sqlite3.Connection | None = None
        self._reader_pid = 0
        # The newest message id per room, valid while the reader's data_version
        # reads as it did when the ids were read (see `latest_message_id`).
        self._latest: tuple[sqlite3.Connection | None, int, dict[str, str | None]] = (
            None,
            0,
            {},
        )
        # A second connection, only for `wait_for_messages`: (pid, connection,
        # data_version seen, newest message id seen).
        self._watch_lock = PatchAwareLock()
        self._watch: tuple[int, sqlite3.Connection, int, int] | None = None
        self._watched_rooms: set[str] = set()
        self._watch_stale = False  # set when a new writer wants it opened afresh
        with self._lock:
            try:
                self._connect()
            except StoreUnavailable as error:
                if _result_code(error.__cause__) not in OPEN_DESPITE:
                    raise

    def _connect(self) -> sqlite3.Connection:
        """Open (or reopen after a fork or a failed write), migrate, and commit a
        heartbeat: SQLite would open a file it may not write read-only without a
        word, and such a connection is never kept. Caller holds `_lock`."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # another process's connection is dropped, never closed
        if self._remap:
            self._remap = False
            self._release_readers()
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            # Writers wait in `_begin`; the short timeout covers the brief locks
            # that WAL readers and checkpoints may meet.
            conn.execute(f"PRAGMA busy_timeout = {READ_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # made durable by `_durable`
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            self._begin(conn)
            self._beat(conn)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                _close(conn)  # rolls back what it began
            self._remap = _result_code(exc) in REMAP_AFTER
            raise StoreUnavailable() from exc
        self._conn, self._pid = conn, os.getpid()
        self._sync.connected()
        return conn

    def _release_readers(self) -> None:
        """Close the reader now and the watcher at its next poll, so that the next
        writer maps the `-shm` file afresh (see `REMAP_AFTER`). Caller holds `_lock`."""
        with self._read_lock:
            if self._reader is not None and self._reader_pid == os.getpid():
                _close(self._reader)
            self._reader = None
        self._watch_stale = True

    @staticmethod
    def _beat(conn: sqlite3.Connection) -> None:
        """The smallest write that must commit: one row, rewritten."""
        conn.execute(
            "INSERT INTO heartbeat (id, beat_us) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET beat_us = excluded.beat_us",
            (_to_us(datetime.now(UTC)),),
        )

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring the schema forward inside one write transaction, so that workers
        starting together migrate once."""
        if conn.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
            return
        SqliteBackend._begin(conn)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for step in MIGRATIONS[version:]:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block under the lock as one transaction; SQLite trouble becomes 503.
        Done once the transaction is on disk."""
        with self._lock, self._locked_transaction() as conn:
            yield conn
        self._durable()

    def _durable(self) -> None:
        """Wait, without the lock, for a shared fsync that began after this
        process's last commit. Every write transaction waits, even one that
        changed nothing: what it read (a retried message, a ticket) may be
        another process's commit, which is then durable too."""
        try:
            self._sync.wait()
        except OSError as exc:
            raise StoreUnavailable() from exc

    @contextmanager
    def _locked_transaction(self) -> Iterator[sqlite3.Connection]:
        """`_transaction` for a caller that holds the lock, without the wait for
        the disk (the caller waits, in `_durable`, once it let go of the lock).
        COMMIT only writes the WAL: other workers wait for the lock that long."""
        conn = self._connect()
        committed = False
        try:
            self._begin(conn)
            try:
                yield conn
                conn.execute("COMMIT")
                committed = True
            finally:
                if not committed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if _reopen_after(exc):
                self._conn, self._remap = None, _result_code(exc) in REMAP_AFTER
                _close(conn)
            raise StoreUnavailable() from exc

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        begin_immediate(conn, BUSY_TIMEOUT_MS / 1000)

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Reads have a connection of their own: under WAL it sees every committed
        write and never waits for a commit in progress on the writing one."""
        with self._read_lock:
            try:
                if self._reader is None or self._reader_pid != os.getpid():
                    self._reader = self._open_reader()
                    self._reader_pid = os.getpid()
                return query(self._reader)
            except sqlite3.Error as exc:
                if _reopen_after(exc) and self._reader_pid == os.getpid():
                    if self._reader is not None:
                        _close(self._reader)
                    self._reader = None
                raise StoreUnavailable() from exc

    def _open_reader(self) -> sqlite3.Connection:
        """The schema is current: `__init__` migrated before any read."""
        conn = sqlite3.connect(
            self.path,
            timeout=READ_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA user_version").fetchone()  # opens the wal-index for good
        except sqlite3.Error:
            _close(conn)
            raise
        return conn

    def create_room(self, roomid: str, alias: str, owner_digest: str = "") -> bool:
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO rooms (id, alias, owner_digest) VALUES (?, ?, ?)",
                (roomid, alias, owner_digest),
            )
            return cursor.rowcount == 1

    def room_alias(self, roomid: str) -> str | None:
        row = self._read(
            lambda c: c.execute(
                "SELECT alias FROM rooms WHERE id = ? AND removed = 0", (roomid,)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def room_settings(self, roomid: str) -> RoomSettings:
        return self._read(lambda c: _settings(c, roomid))

    def update_settings(
        self,
        roomid: str,
        *,
        owner_digest: str | None = None,
        registration_open: bool | None = None,
        retention_days: int | Unset | None = UNSET,
    ) -> None:
        changes: dict[str, object] = {}
        if owner_digest is not None:
            changes["owner_digest"] = owner_digest
        if registration_open is not None:
            changes["registration_open"] = int(registration_open)
        if not isinstance(retention_days, Unset):
            changes["retention_days"] = retention_days
        if not changes:
            return
        assignments = ", ".join(f"{column} = ?" for column in changes)  # names from above
        with self._transaction() as conn:
            conn.execute(
                f"UPDATE rooms SET {assignments} WHERE id = ?",  # noqa: S608
                (*changes.values(), roomid),
            )

    def set_ban(self, roomid: str, key: str, username: str | None) -> bool:
        with self._transaction() as conn:
            if username is None:
                cursor = conn.execute(
                    "DELETE FROM bans WHERE room_id = ? AND name_key = ?", (roomid, key)
                )
            else:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO bans (room_id, name_key, username) VALUES (?, ?, ?)",
                    (roomid, key, username),
                )
            return cursor.rowcount == 1

    def add_user(self, roomid: str, key: str, user: UserRecord, max_users: int) -> AddedUser:
        """Counted inside the write transaction, which no other writer can enter."""
        with self._transaction() as conn:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM users WHERE room_id = ?", (roomid,)
            ).fetchone()
            if count >= max_users:
                return AddedUser.ROOM_FULL
            cursor = conn.execute(
                "INSERT OR IGNORE INTO users (room_id, name_key, username, password_hash)"
                " VALUES (?, ?, ?, ?)",
                (roomid, key, user.username, user.password_hash),
            )
            return AddedUser.ADDED if cursor.rowcount == 1 else AddedUser.NAME_TAKEN

    def get_user(self, roomid: str, key: str) -> UserRecord | None:
        row = self._read(
            lambda c: c.execute(
                "SELECT username, password_hash FROM users WHERE room_id = ? AND name_key = ?",
                (roomid, key),
            ).fetchone()
        )
        return None if row is None else UserRecord(row[0], row[1])

    def count_users(self, roomid: str) -> int:
        row = self._read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM users WHERE room_id = ?", (roomid,)
            ).fetchone()
        )
        return int(row[0])

    def add_token(self, roomid: str, key: str, digest: str, keep: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO tokens (room_id, name_key, digest, created_us)"
                " VALUES (?, ?, ?, ?)",
                (roomid, key, digest, _to_us(datetime.now(UTC))),
            )
            conn.execute(
                "DELETE FROM tokens WHERE room_id = ? AND name_key = ? AND digest NOT IN"
                " (SELECT digest FROM tokens WHERE room_id = ? AND name_key = ?"
                "  ORDER BY created_us DESC, digest DESC LIMIT ?)",
                (roomid, key, roomid, key, keep),
            )

    def token_digests(self, roomid: str, key: str) -> list[str]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT digest FROM tokens WHERE room_id = ? AND name_key = ? ORDER BY created_us",
                (roomid, key),
            ).fetchall()
        )
        return [row[0] for row in rows]

    def remove_tokens(self, roomid: str, key: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM tokens WHERE room_id = ? AND name_key = ?", (roomid, key))

    def remove_token(self, roomid: str, key: str, digest: str) -> bool:
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM tokens WHERE room_id = ? AND name_key = ? AND digest = ?",
                (roomid, key, digest),
            )
            return cursor.rowcount == 1

    def append_message(
        self,
        roomid: str,
        key: str,
        username: str,
        text: str,
        posted_at: datetime,
        client_id: str | None,
    ) -> tuple[StoredMessage, bool]:
        """One transaction per message: the posts of every process that commit
        while an fsync runs share the next one (see `sqlite_sync`), so batching
        rows into one transaction saves little (measured under load: about 1 % of
        posts found one to join)."""
        with self._transaction() as conn:
            if client_id is not None:
                row = conn.execute(
                    "SELECT seq, username, body, posted_at_us FROM messages"
                    " WHERE room_id = ? AND name_key = ? AND client_id = ?",
                    (roomid, key, client_id),
                ).fetchone()
                if row is not None:
                    return _message(row), False
            # Stamped under the write lock: the next row cannot get an earlier time.
            stamp = max(_to_us(posted_at), _to_us(datetime.now(UTC)))
            seq = self._next_seq(conn, roomid)
            conn.execute(
                "INSERT INTO messages"
                " (room_id, seq, name_key, username, body, posted_at_us, client_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (roomid, seq, key, username, text, stamp, client_id),
            )
            return _message((seq, username, text, stamp)), True

    def append_event(
        self, roomid: str, kind: str, username: str = "", target: str | None = None
    ) -> StoredMessage:
        with self._transaction() as conn:
            return self._insert_event(conn, roomid, kind, username, target)

    @staticmethod
    def _insert_event(
        conn: sqlite3.Connection, roomid: str, kind: str, username: str, target: str | None
    ) -> StoredMessage:
        stamp = _to_us(datetime.now(UTC))
        seq = SqliteBackend._next_seq(conn, roomid)
        conn.execute(
            "INSERT INTO messages"
            " (room_id, seq, name_key, username, body, posted_at_us, kind, target)"
            " VALUES (?, ?, '', ?, '', ?, ?, ?)",
            (roomid, seq, username, stamp, kind, target),
        )
        return StoredMessage(str(seq), _from_us(stamp), username, "", kind, target)

    @staticmethod
    def _next_seq(conn: sqlite3.Connection, roomid: str) -> int:
        """The room's next id, inside the write transaction. Counted in `rooms`
        rather than from the newest row, so that it never goes back, not even
        when the newest entry is deleted (its "delete" event must come after it)."""
        rows = conn.execute(
            "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq", (roomid,)
        ).fetchall()
        if not rows:  # as the foreign key would have said
            raise sqlite3.IntegrityError(f"no room {roomid!r}")
        return int(rows[0][0])

    def message_author(self, roomid: str, message_id: str) -> str | None:
        wanted = parse_sequence_id(message_id)
        row = self._read(
            lambda c: c.execute(
                "SELECT name_key FROM messages WHERE room_id = ? AND seq = ? AND kind = 'message'",
                (roomid, wanted),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    def delete_message(self, roomid: str, message_id: str) -> StoredMessage | None:
        wanted = parse_sequence_id(message_id)
        with self._erasing() as conn:
            cursor = conn.execute(
                "DELETE FROM messages WHERE room_id = ? AND seq = ? AND kind = 'message'",
                (roomid, wanted),
            )
            if cursor.rowcount != 1:
                return None
            return self._insert_event(conn, roomid, DELETE, "", str(wanted))

    @contextmanager
    def _erasing(self) -> Iterator[sqlite3.Connection]:
        """A transaction whose deletions leave no trace in the file: SQLite
        overwrites what it deletes (`secure_delete`), and a checkpoint afterwards
        moves the WAL's copies of the old pages out. Moderation is rare, so the
        checkpoint's cost is paid seldom."""
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("PRAGMA secure_delete = ON")
                with self._locked_transaction() as conn:
                    yield conn
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA secure_delete = OFF")
            with contextlib.suppress(sqlite3.Error):  # readers may hold it back: no matter
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self._durable()

    def purge_before(self, roomid: str, cutoff: datetime) -> int:
        with self._erasing() as conn:
            (messages,) = conn.execute(
                "SELECT COUNT(*) FROM messages"
                " WHERE room_id = ? AND posted_at_us < ? AND kind = 'message'",
                (roomid, _to_us(cutoff)),
            ).fetchone()
            cursor = conn.execute(
                "DELETE FROM messages WHERE room_id = ? AND posted_at_us < ?",
                (roomid, _to_us(cutoff)),
            )
            if cursor.rowcount:
                self._insert_event(conn, roomid, TRIM, "", None)
            return int(messages)

    def recent_messages(self, roomid: str, limit: int) -> list[StoredMessage]:
        return self._older_than(roomid, 2**63 - 1, limit)

    def messages_before(self, roomid: str, before: str, limit: int) -> list[StoredMessage]:
        return self._older_than(roomid, parse_sequence_id(before), limit)

    def _older_than(self, roomid: str, cut: int, limit: int) -> list[StoredMessage]:
        """The `limit` messages just below id `cut`, oldest first."""
        rows = self._read(
            lambda c: c.execute(
                "SELECT seq, username, body, posted_at_us FROM messages"
                " WHERE room_id = ? AND seq < ? AND kind = 'message' ORDER BY seq DESC LIMIT ?",
                (roomid, cut, max(limit, 0)),
            ).fetchall()
        )
        return [_message(row) for row in reversed(rows)]

    def messages_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        cut = 0 if after is None else parse_sequence_id(after)
        rows = self._read(
            lambda c: c.execute(
                "SELECT seq, username, body, posted_at_us FROM messages"
                " WHERE room_id = ? AND seq > ? AND kind = 'message' ORDER BY seq LIMIT ?",
                (roomid, cut, max(limit, 0)),
            ).fetchall()
        )
        return [_message(row) for row in rows]

    def events_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        cut = 0 if after is None else parse_sequence_id(after)
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {ENTRY} FROM messages WHERE room_id = ? AND seq > ?"  # noqa: S608
                " ORDER BY seq LIMIT ?",
                (roomid, cut, max(limit, 0)),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    def count_messages(self, roomid: str) -> int:
        row = self._read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM messages WHERE room_id = ? AND kind = 'message'", (roomid,)
            ).fetchone()
        )
        return int(row[0])

    def latest_message_id(self, roomid: str) -> str | None:
        """Asked on every `get_conversation` poll, so it is answered from memory
        while no connection of any process has committed since the id was read:
        `PRAGMA data_version` on the reader moves at every such commit, and costs
        less than the query. It is read before the query, so a commit in between
        only makes the next call read again. (Reading the wal-index header by
        hand instead was measured at under 5 % more polls: not worth its code.)"""

        def read(conn: sqlite3.Connection) -> str | None:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            reader, seen, latest = self._latest  # a full dict is replaced, never emptied
            if reader is conn and seen == version and roomid in latest:
                return latest[roomid]
            found = self._newest(conn, roomid)
            if reader is not conn or seen != version or len(latest) >= LATEST_CACHE_SIZE:
                latest = {}
                self._latest = (conn, version, latest)
            latest[roomid] = found
            return found

        return self._read(read)

    @staticmethod
    def _newest(conn: sqlite3.Connection, roomid: str) -> str | None:
        newest = conn.execute(
            "SELECT MAX(seq) FROM messages WHERE room_id = ?", (roomid,)
        ).fetchone()[0]
        return None if newest is None else str(newest)

    def wait_for_messages(self, roomids: Collection[str], timeout: float) -> set[str]:
        """Poll `PRAGMA data_version` (which moves when another connection commits)
        on a connection of its own, then ask which of `roomids` gained messages.
        A room watched for the first time counts as changed."""
        deadline = time.monotonic() + timeout
        with self._watch_lock:
            if self._watch_stale:
                self._watch_stale = False
                if self._watch is not None and self._watch[0] == os.getpid():
                    _close(self._watch[1])
                    self._watch, self._watched_rooms = None, set()  # all rooms look once
            if self._watch is None or self._watch[0] != os.getpid():
                self._watch = self._open_watch()
            fresh = set(roomids) - self._watched_rooms
            self._watched_rooms = set(roomids)
            pid, conn, version, newest = self._watch
            if fresh:  # what arrived before watching began: let listeners look once
                return fresh
            try:
                while True:
                    current = conn.execute("PRAGMA data_version").fetchone()[0]
                    if current != version or self._watch_stale or time.monotonic() >= deadline:
                        break
                    time.sleep(WATCH_INTERVAL)
                if current == version:
                    return set()
                # By rowid: what is new, not the whole table (without NOT INDEXED
                # the planner scans a (room_id, ...) index for the DISTINCT).
                rows = conn.execute(
                    "SELECT DISTINCT room_id FROM messages NOT INDEXED WHERE id > ?", (newest,)
                ).fetchall()
                latest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
            except sqlite3.Error as exc:
                if _reopen_after(exc):
                    self._watch, self._watched_rooms = None, set()  # all rooms look once
                    _close(conn)
                raise StoreUnavailable() from exc
            self._watch = (pid, conn, current, latest)
        return {row[0] for row in rows} & set(roomids)

    def _open_watch(self) -> tuple[int, sqlite3.Connection, int, int]:
        """The watching connection, with the data version and newest id it sees."""
        conn = None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            newest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        except sqlite3.Error as exc:
            if conn is not None:
                _close(conn)
            raise StoreUnavailable() from exc
        return os.getpid(), conn, version, newest

    def add_ticket(
        self, roomid: str, digest: str, username: str, expires_at: float, session: str
    ) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM tickets WHERE expires_at <= ?", (time.time(),))
            conn.execute(
                "INSERT INTO tickets (digest, room_id, username, expires_at, session)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest, roomid, username, expires_at, session),
            )

    def take_ticket(self, roomid: str, digest: str, now: float) -> tuple[str, str] | None:
        with self._transaction() as conn:
            row = conn.execute(
                "DELETE FROM tickets WHERE digest = ? AND room_id = ?"
                " RETURNING username, expires_at, session",
                (digest, roomid),
            ).fetchone()
        return None if row is None or row[1] <= now else (str(row[0]), str(row[2]))

    def set_presence(
        self, roomid: str, stream: str, username: str, expires_at: float, session: str
    ) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM presence WHERE expires_at <= ?", (time.time(),))
            conn.execute(
                "INSERT INTO presence (room_id, stream, username, expires_at, session)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, stream) DO UPDATE SET expires_at = excluded.expires_at",
                (roomid, stream, username, expires_at, session),
            )

    def renew_presence(
        self, roomid: str, streams: Sequence[tuple[str, str, str]], expires_at: float
    ) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM presence WHERE expires_at <= ?", (time.time(),))
            conn.executemany(
                "UPDATE presence SET expires_at = ? WHERE room_id = ? AND stream = ?",
                [(expires_at, roomid, stream) for stream, _, _ in streams],
            )

    def end_presence(self, roomid: str, session: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM presence WHERE room_id = ? AND session = ?", (roomid, session)
            )

    def end_presence_of(self, roomid: str, username: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM presence WHERE room_id = ? AND username = ?", (roomid, username)
            )

    def online(self, roomid: str, now: float) -> list[str]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT DISTINCT username FROM presence WHERE room_id = ? AND expires_at > ?"
                " ORDER BY username",
                (roomid, now),
            ).fetchall()
        )
        return [row[0] for row in rows]

    def room_ids(self) -> Iterator[str]:
        rows = self._read(
            lambda c: c.execute("SELECT id FROM rooms WHERE removed = 0 ORDER BY id").fetchall()
        )
        return iter([row[0] for row in rows])

    def dump_room(self, roomid: str) -> RoomDump:
        def query(c: sqlite3.Connection) -> RoomDump:
            (alias,) = c.execute("SELECT alias FROM rooms WHERE id = ?", (roomid,)).fetchone()
            dump = RoomDump(roomid=roomid, alias=alias, settings=_settings(c, roomid))
            for key, username, password_hash in c.execute(
                "SELECT name_key, username, password_hash FROM users WHERE room_id = ?"
                " ORDER BY name_key",
                (roomid,),
            ):
                dump.users[key] = UserRecord(username, password_hash)
                dump.tokens[key] = []
            for key, digest in c.execute(
                "SELECT name_key, digest FROM tokens WHERE room_id = ? ORDER BY created_us",
                (roomid,),
            ):
                dump.tokens[key].append(digest)
            dump.messages = [
                _message(row)
                for row in c.execute(
                    "SELECT seq, username, body, posted_at_us FROM messages"
                    " WHERE room_id = ? AND kind = 'message' ORDER BY seq",
                    (roomid,),
                )
            ]
            return dump

        return self._read(query)

    def delete_room(self, roomid: str) -> None:
        with self._transaction() as conn:
            self._empty_room(conn, roomid)
            conn.execute("DELETE FROM rooms WHERE id = ?", (roomid,))

    def remove_room(self, roomid: str) -> None:
        with self._erasing() as conn:
            self._empty_room(conn, roomid)
            conn.execute(
                "UPDATE rooms SET alias = '', owner_digest = '', registration_open = 0,"
                " retention_days = NULL, removed = 1 WHERE id = ?",
                (roomid,),
            )
            self._insert_event(conn, roomid, GONE, "", None)

    @staticmethod
    def _empty_room(conn: sqlite3.Connection, roomid: str) -> None:
        for table in ("tokens", "bans", "users", "messages", "tickets", "presence"):
            conn.execute(f"DELETE FROM {table} WHERE room_id = ?", (roomid,))  # noqa: S608

    def restore_room(self, dump: RoomDump) -> None:
        with self._transaction() as conn:
            settings = dump.settings
            conn.execute(
                "INSERT INTO rooms (id, alias, owner_digest, registration_open, retention_days)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    dump.roomid,
                    dump.alias,
                    settings.owner_digest,
                    int(settings.registration_open),
                    settings.retention_days,
                ),
            )
            conn.executemany(
                "INSERT INTO bans (room_id, name_key, username) VALUES (?, ?, ?)",
                [(dump.roomid, key, name) for key, name in settings.banned.items()],
            )
            conn.executemany(
                "INSERT INTO users (room_id, name_key, username, password_hash)"
                " VALUES (?, ?, ?, ?)",
                [(dump.roomid, k, u.username, u.password_hash) for k, u in dump.users.items()],
            )
            conn.executemany(
                "INSERT INTO tokens (room_id, name_key, digest, created_us) VALUES (?, ?, ?, ?)",
                [
                    (dump.roomid, k, d, order)
                    for k, digests in dump.tokens.items()
                    for order, d in enumerate(digests)
                ],
            )
            conn.executemany(
                "INSERT INTO messages (room_id, seq, name_key, username, body, posted_at_us)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        dump.roomid,
                        seq,
                        m.username.casefold(),
                        m.username,
                        m.text,
                        _to_us(m.posted_at),
                    )
                    for seq, m in enumerate(dump.messages, start=1)
                ],
            )
            conn.execute(
                "UPDATE rooms SET last_seq = ? WHERE id = ?", (len(dump.messages), dump.roomid)
            )

    def ping(self) -> None:
        """A heartbeat commit, then a read: a store that answers but cannot write
        (a read-only file, a full disk) is not healthy. One small fsync."""
        with self._transaction() as conn:
            self._beat(conn)
        self._read(lambda c: c.execute("SELECT 1").fetchone())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
        with self._read_lock:
            if self._reader is not None and self._reader_pid == os.getpid():
                self._reader.close()
            self._reader = None
            self._latest = (None, 0, {})
        with self._watch_lock:
            if self._watch is not None and self._watch[0] == os.getpid():
                self._watch[1].close()
            self._watch = None
        self._sync.close()

    def integrity_check(self) -> str:
        """`ok` when SQLite finds nothing wrong with the file."""
        return str(self._read(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0]))

    def backup(self, path: str | os.PathLike[str]) -> None:
        """Copy the database as it stands at one moment into the SQLite file `path`
        (SQLite's online backup API, in one step: one read transaction, so one
        consistent snapshot). Under WAL, writers of every process go on meanwhile."""
        try:
            source = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
            with contextlib.closing(source), contextlib.closing(sqlite3.connect(path)) as target:
                source.backup(target)
        except sqlite3.Error as exc:
            raise StoreUnavailable() from exc
