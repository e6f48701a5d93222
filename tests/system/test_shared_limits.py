"""Rate limits mean what they say with several gunicorn workers on one SQLite
store: the workers count together in a limits file beside the store, whichever
of them answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import Service, call, gunicorn_service

pytestmark = pytest.mark.system

PASSWORD = "correct horse battery"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Service]:
    """Two gevent workers on one SQLite file, limits on, each request's worker
    in the access log."""
    env = {
        "FLASKCHAT_RATELIMIT_ENABLED": "true",
        "FLASKCHAT_RATELIMIT_CREATEROOM": "3/minute",
        "FLASKCHAT_RATELIMIT_REGISTER": "100/minute",
        "FLASKCHAT_RATELIMIT_LOGIN": "1000/minute",  # only the lock-out refuses logins
        "FLASKCHAT_RATELIMIT_LOGIN_FAILURES": "4/minute",
    }
    options = ["-k", "gevent", "--access-logfile", "-", "--access-logformat", "pid=%(p)s %(U)s"]
    service = gunicorn_service(
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        tmp_path / "gunicorn.log",
        *options,
        workers=2,
        env=env,
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def at_once(count: int, send: Callable[[], int]) -> Counter[int]:
    """`send()` from `count` threads at once; the count of each status."""
    with ThreadPoolExecutor(count) as pool:
        return Counter(pool.map(lambda _: send(), range(count)))


def workers_that_answered(service: Service, path: str) -> set[str]:
    return {line.split()[0] for line in service.logs().splitlines() if line.endswith(f" {path}")}


def refused_by_both_workers(service: Service, path: str, body: dict[str, str]) -> bool:
    """Send `body` one request at a time, each on a new connection, until both
    workers have answered: true if every answer was 429."""
    for _ in range(500):
        if call(service.url, path, body)[0] != 429:
            return False
        if len(workers_that_answered(service, path)) == 2:
            return True
    raise AssertionError("one worker answered every request")


def test_workers_on_one_sqlite_store_share_limits(server: Service, tmp_path: Path) -> None:
    created = at_once(24, lambda: call(server.url, "/createroom", {"alias": "x"})[0])
    assert created == {200: 3, 429: 21}
    assert refused_by_both_workers(server, "/createroom", {"alias": "x"})
    assert (tmp_path / "chat.sqlite3.limits").exists()


def test_the_lockout_holds_across_workers(server: Service) -> None:
    status, body = call(server.url, "/createroom", {"alias": "locked"})
    assert status == 200, body
    roomid = body["roomid"]
    user = {"username": "alice", "password": PASSWORD}
    assert call(server.url, f"/{roomid}/register", user)[0] == 200
    guess = {"username": "alice", "password": "a wrong guess"}
    guessed = at_once(16, lambda: call(server.url, f"/{roomid}/login", guess)[0])
    assert guessed == {401: 4, 429: 12}
    assert refused_by_both_workers(server, f"/{roomid}/login", guess)
