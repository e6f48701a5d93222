"""What only the Redis backend adds to redis-py: a cheaper "unread data?" check on
its pooled connections, which must still see every unread reply."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from flaskchat.backends.redis import RedisBackend
from flaskchat.rules import new_roomid


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    backend = RedisBackend(redis_url)
    yield backend
    backend.close()


def test_an_idle_connection_is_lent_again_as_it_is(backend: RedisBackend) -> None:
    roomid = new_roomid()
    backend.create_room(roomid, "kept")
    pool = backend.client.connection_pool
    connection = pool.get_connection()
    sock = connection._sock
    pool.release(connection)
    assert backend.room_alias(roomid) == "kept"
    again = pool.get_connection()
    assert again is connection and again._sock is sock  # not reconnected
    pool.release(again)


def test_can_read_sees_replies_on_the_socket_and_in_the_reader(backend: RedisBackend) -> None:
    """The cheap check must answer as redis-py's does: data on the socket, or a
    reply already read off it into hiredis's buffer, both count as unread."""
    pool = backend.client.connection_pool
    connection = pool.get_connection()
    try:
        assert connection.can_read() is False
        connection.send_command("ECHO", "first")
        connection.send_command("ECHO", "second")
        deadline = time.monotonic() + 5
        while not connection.can_read() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # both replies are on the socket now
        assert connection.read_response() == "first"  # reads both into the buffer
        assert connection.can_read() is True
        assert connection.read_response() == "second"
        assert connection.can_read() is False
    finally:
        pool.release(connection)
