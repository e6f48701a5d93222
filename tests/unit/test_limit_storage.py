"""The SQLite storage for rate-limit counts: a moving window that moves, fixed
counters that expire, clearing, sharing one file between processes, a file that
stays bounded, and giving back a hit on every storage flaskchat configures."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from limits import parse
from limits.errors import ConfigurationError
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from flaskchat.limit_storage import SWEEP_INTERVAL, SqliteStorage, storage_uri, take_back

BASE = 1_000_000.0


class Clock:
    """A time source the test moves by hand."""

    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chat.sqlite3.limits"


@pytest.fixture
def storage(path: Path, clock: Clock) -> Iterator[SqliteStorage]:
    opened = storage_from_string(storage_uri(path))
    assert isinstance(opened, SqliteStorage)
    opened.clock = clock
    yield opened
    opened.close()


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        count = conn.execute(
            "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM counters)"
        )
        return int(count.fetchone()[0])


def test_a_uri_without_a_path_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        storage_from_string("flaskchat+sqlite://")


def test_the_window_moves(storage: SqliteStorage, clock: Clock) -> None:
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/minute")
    for at in (0, 20, 40):
        clock.now = BASE + at
        assert limiter.hit(item, "alice")
    clock.now = BASE + 50
    assert not limiter.hit(item, "alice")
    assert not limiter.test(item, "alice")
    assert limiter.hit(item, "bob")  # keys are counted apart
    clock.now = BASE + 60.5  # the hit at 0 has left the window; those at 20 and 40 have not
    assert limiter.test(item, "alice")
    assert limiter.hit(item, "alice")
    assert not limiter.hit(item, "alice")
    reset, remaining = limiter.get_window_stats(item, "alice")
    assert (reset, remaining) == (BASE + 80, 0)
    clock.now = BASE + 80.5
    assert limiter.hit(item, "alice")


def test_fixed_window_counters_expire(storage: SqliteStorage, clock: Clock) -> None:
    limiter = FixedWindowRateLimiter(storage)
    item = parse("2/minute")
    assert limiter.hit(item, "alice")
    clock.now += 30
    assert limiter.hit(item, "alice")
    assert not limiter.hit(item, "alice")
    assert limiter.get_window_stats(item, "alice") == (BASE + 60, 0)
    clock.now += 31  # the window opened by the first hit is over
    assert limiter.hit(item, "alice")
    assert storage.get(item.key_for("alice")) == 1


def test_clear_forgets_one_key_and_reset_all(storage: SqliteStorage) -> None:
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    item = parse("1/hour")
    for who in ("alice", "bob"):
        assert moving.hit(item, who)
        assert fixed.hit(item, "counter", who)
    moving.clear(item, "alice")
    fixed.clear(item, "counter", "alice")
    assert moving.hit(item, "alice")
    assert fixed.hit(item, "counter", "alice")
    assert not moving.hit(item, "bob")
    assert not fixed.hit(item, "counter", "bob")
    assert storage.reset() == 4
    assert moving.hit(item, "bob")
    assert storage.check()


def test_processes_on_one_file_share_the_counts(path: Path, storage: SqliteStorage) -> None:
    """Two storages on one file are what two workers hold; hits sent at once
    from both get exactly the limit."""
    other = SqliteStorage(storage_uri(path))
    other.clock = storage.clock  # one time for both, as two processes share one
    item = parse("10/minute")
    limiters = [MovingWindowRateLimiter(storage), MovingWindowRateLimiter(other)]
    start = threading.Barrier(8)

    def hits(n: int) -> int:
        start.wait(timeout=30)
        return sum(limiters[n % 2].hit(item, "shared") for _ in range(5))

    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(hits, range(8))) == 10
    finally:
        other.close()


def test_expired_entries_are_swept_so_the_file_stays_bounded(
    path: Path, storage: SqliteStorage, clock: Clock
) -> None:
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    item = parse("5/minute")

    def fill() -> int:
        for n in range(300):
            moving.hit(item, f"address {n}")
            fixed.hit(item, f"address {n}")
        with sqlite3.connect(path) as conn:
            return int(conn.execute("PRAGMA page_count").fetchone()[0])

    pages = fill()
    assert rows(path) == 600
    for _ in range(3):
        clock.now += SWEEP_INTERVAL + 60
        moving.hit(item, "one more")  # the first write after the interval sweeps
        assert rows(path) == 1
        assert fill() <= pages  # space freed by the sweep is used again
        assert rows(path) == 601


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_storage(request: pytest.FixtureRequest, path: Path) -> Iterator[Storage]:
    """Each storage flaskchat configures: memory, a limits file, Redis."""
    if request.param == "memory":
        yield MemoryStorage()
    elif request.param == "sqlite":
        opened = SqliteStorage(storage_uri(path))
        yield opened
        opened.close()
    else:
        redis_storage = RedisStorage(str(request.getfixturevalue("redis_url")))
        yield redis_storage
        redis_storage.storage.close()


def test_a_hit_can_be_given_back(any_storage: Storage) -> None:
    limiter = MovingWindowRateLimiter(any_storage)
    item = parse("2/minute")
    key = item.key_for("alice")
    assert limiter.hit(item, "alice")
    assert limiter.hit(item, "alice")
    assert not limiter.hit(item, "alice")
    take_back(limiter, key)
    assert limiter.get_window_stats(item, "alice").remaining == 1
    assert limiter.hit(item, "alice")
    assert not limiter.hit(item, "alice")
    take_back(limiter, item.key_for("nobody"))  # nothing to give back is no error
