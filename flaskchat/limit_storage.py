"""`flaskchat+sqlite:///path`: rate-limit counts in a SQLite file of their own,
so that every worker process on one machine counts against the same budgets.

A `limits` storage (registered through the library's own `Storage` subclass
hook), with the moving-window strategy flaskchat uses and fixed-window
counters. Counts need not survive a power cut, so the file runs in WAL mode
with `synchronous=OFF`; expired entries are swept as writes go by, so the file
holds only live windows.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from limits.errors import ConfigurationError
from limits.storage import MemoryStorage, MovingWindowSupport, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from .backends.sqlite import begin_immediate

SCHEME = "flaskchat+sqlite"
# How long a writer waits for the other processes before the hit fails (and,
# with RATELIMIT_SWALLOW_ERRORS, the request is served unlimited).
BUSY_TIMEOUT = 5.0
# Seconds between sweeps of every expired entry, in each process.
SWEEP_INTERVAL = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT NOT NULL,
    at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_key ON entries (key, at);
CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_by_expiry ON counters (expires_at);
"""


def storage_uri(path: str | os.PathLike[str]) -> str:
    """The `RATELIMIT_STORAGE_URI` of a limits file at `path` (absolute, or
    relative to the working directory)."""
    return f"{SCHEME}:///{os.fspath(path)}"


class SqliteStorage(Storage, MovingWindowSupport):
    """Moving windows as one row per entry, fixed windows as one counter row.

    Each process has one connection, behind a lock (it works the same under
    threads and gevent), reopened after a fork. `clock` is the time source,
    replaceable in tests.
    """

    STORAGE_SCHEME = [SCHEME]  # noqa: RUF012 (the type the base class declares)

    def __init__(
        self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool
    ) -> None:
        path = uri.removeprefix(f"{SCHEME}:///")
        if path == uri or not path:
            raise ConfigurationError(f"A limits file is named as {SCHEME}:///path, not {uri!r}")
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = Path(path)
        self.clock: Callable[[], float] = time.time
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._swept = 0.0
        with self._lock:
            self._connect()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (sqlite3.Error, OSError)

    def _connect(self) -> sqlite3.Connection:
        """Open (or reopen after a fork) and create the tables; caller holds `_lock`."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        self._begin(conn)
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # From now on writers wait in `_begin`, with sleeps that yield under gevent.
        conn.execute("PRAGMA busy_timeout = 50")
        self._conn, self._pid = conn, os.getpid()
        return conn

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        begin_immediate(conn, BUSY_TIMEOUT)

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One write transaction and the time it runs at; sweeps expired entries
        now and then, so the file holds live windows only."""
        with self._lock:
            conn = self._connect()
            self._begin(conn)
            try:
                now = self.clock()
                if now - self._swept >= SWEEP_INTERVAL:
                    conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
                    conn.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))
                    self._swept = now
                yield conn, now
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        with self._lock:
            yield self._connect(), self.clock()

    # Moving window

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self._write() as (conn, now):
            conn.execute("DELETE FROM entries WHERE key = ? AND at <= ?", (key, now - expiry))
            (count,) = conn.execute("SELECT count(*) FROM entries WHERE key = ?", (key,)).fetchone()
            if count + amount > limit:
                return False
            conn.executemany(
                "INSERT INTO entries (key, at, expires_at) VALUES (?, ?, ?)",
                [(key, now, now + expiry)] * amount,
            )
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The oldest of the newest `limit` entries in the window, and their number."""
        with self._read() as (conn, now):
            start, count = conn.execute(
                "SELECT min(at), count(*) FROM ("
                " SELECT at FROM entries WHERE key = ? AND at > ? ORDER BY at DESC LIMIT ?)",
                (key, now - expiry, limit),
            ).fetchone()
        return (float(start), int(count)) if count else (now, 0)

    def take_back(self, key: str) -> None:
        """Remove the newest entry of a moving window: one hit undone."""
        with self._write() as (conn, _):
            conn.execute(
                "DELETE FROM entries WHERE rowid ="
                " (SELECT rowid FROM entries WHERE key = ? ORDER BY at DESC LIMIT 1)",
                (key,),
            )

    # Fixed window

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        with self._write() as (conn, now):
            conn.execute("DELETE FROM counters WHERE key = ? AND expires_at <= ?", (key, now))
            ((value,),) = conn.execute(
                "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value"
                " RETURNING value",
                (key, amount, now + expiry),
            ).fetchall()
        return int(value)

    def get(self, key: str) -> int:
        with self._read() as (conn, now):
            row = conn.execute(
                "SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        with self._read() as (conn, now):
            row = conn.execute(
                "SELECT expires_at FROM counters WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
        return float(row[0]) if row else now

    # Housekeeping

    def clear(self, key: str) -> None:
        with self._write() as (conn, _):
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            conn.execute("DELETE FROM counters WHERE key = ?", (key,))

    def reset(self) -> int | None:
        """Forget every count; returns how many keys there were."""
        with self._write() as (conn, _):
            (keys,) = conn.execute(
                "SELECT (SELECT count(DISTINCT key) FROM entries) + (SELECT count(*) FROM counters)"
            ).fetchone()
            conn.execute("DELETE FROM entries")
            conn.execute("DELETE FROM counters")
        return int(keys)

    def check(self) -> bool:
        try:
            with self._read() as (conn, _):
                conn.execute("SELECT 1").fetchone()
        except (sqlite3.Error, OSError):
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def take_back(strategy: RateLimiter, key: str) -> None:
    """Undo one hit on `key`, so that an attempt that turned out well costs
    nothing. Done for moving windows on the storages flaskchat configures
    (this file, Redis, memory); elsewhere the charge stays, which only errs on
    the side of caution."""
    storage = strategy.storage
    if not isinstance(strategy, MovingWindowRateLimiter):
        return
    if isinstance(storage, SqliteStorage):
        storage.take_back(key)
    elif isinstance(storage, RedisStorage):
        # A moving window is a list of timestamps, newest first.
        storage.storage.lpop(storage.prefixed_key(key))
    elif isinstance(storage, MemoryStorage) and key in storage.events:
        with storage.locks[key]:
            if events := storage.events.get(key):
                del events[0]
