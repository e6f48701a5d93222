"""What only the Redis backend adds to redis-py: a cheaper "unread data?" check on
its pooled connections, which must still see every unread reply, and bare
connections for the hot commands, which must never lend a broken or shared one."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from flaskchat import StoreUnavailable
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


def post(backend: RedisBackend, roomid: str, text: str) -> str:
    stored, created = backend.append_message(
        roomid, "alice", "alice", text, datetime.now(UTC), None
    )
    assert created
    return stored.id


def own_connection_id(backend: RedisBackend) -> int:
    """The server's id for the connection the hot commands use next."""
    return int(backend._command("CLIENT", "ID"))


def test_hot_commands_reuse_one_connection(backend: RedisBackend) -> None:
    roomid = new_roomid()
    backend.create_room(roomid, "busy")
    first = own_connection_id(backend)
    newest = post(backend, roomid, "hello")
    assert backend.latest_message_id(roomid) == newest
    assert [m.text for m in backend.recent_messages(roomid, 5)] == ["hello"]
    assert own_connection_id(backend) == first


def test_a_connection_the_server_closed_is_replaced_unnoticed(backend: RedisBackend) -> None:
    roomid = new_roomid()
    backend.create_room(roomid, "restarted")
    newest = post(backend, roomid, "before")
    killed = own_connection_id(backend)
    backend.client.client_kill_filter(_id=killed)
    time.sleep(0.05)
    assert backend.latest_message_id(roomid) == newest  # no 503 for a stale connection
    assert own_connection_id(backend) != killed


def test_an_error_reply_keeps_its_connection(backend: RedisBackend) -> None:
    roomid = new_roomid()
    backend.create_room(roomid, "failing")
    before = own_connection_id(backend)
    with pytest.raises(redis.ResponseError):  # a hash is not a stream
        backend._command("XRANGE", f"flaskchat:{{{roomid}}}:room", "-", "+")
    assert own_connection_id(backend) == before
    assert backend.latest_message_id(roomid) is None


def test_an_interrupted_command_never_leaves_its_reply_to_the_next(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    assert backend._connections is not None
    backend._connections._options["socket_timeout"] = 0.2
    try:
        roomid = new_roomid()
        backend.create_room(roomid, "slow")
        before = own_connection_id(backend)
        with pytest.raises(StoreUnavailable):  # the reply comes after the timeout
            backend._command("BLPOP", f"flaskchat:{{{roomid}}}:empty", "0.4")
        time.sleep(0.3)  # the late reply has been sent by now
        assert own_connection_id(backend) != before
        assert backend.latest_message_id(roomid) is None
    finally:
        backend.close()


def test_a_flushed_script_cache_is_filled_again(backend: RedisBackend) -> None:
    roomid = new_roomid()
    backend.create_room(roomid, "flushed")
    post(backend, roomid, "one")
    backend.client.script_flush()
    newest = post(backend, roomid, "two")
    assert backend.latest_message_id(roomid) == newest


def test_a_forked_child_opens_connections_of_its_own(backend: RedisBackend) -> None:
    parent = own_connection_id(backend)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        try:
            os.write(writer, str(own_connection_id(backend)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 100)
    os.close(reader)
    os.waitpid(child, 0)
    assert int(answer) != parent
    assert own_connection_id(backend) == parent  # the parent's is untouched


def test_other_clients_go_through_redis_py(redis_url: str) -> None:
    pool = redis.BlockingConnectionPool.from_url(redis_url, decode_responses=True)
    backend = RedisBackend(client=redis.Redis(connection_pool=pool))
    try:
        assert backend._connections is None
        roomid = new_roomid()
        backend.create_room(roomid, "handed over")
        backend.client.script_flush()  # the append script is loaded again through redis-py
        newest = post(backend, roomid, "hi")
        assert backend.latest_message_id(roomid) == newest
        assert [m.text for m in backend.messages_after(roomid, None, 5)] == ["hi"]
        assert backend.token_digests(roomid, "alice") == []
    finally:
        backend.close()
        pool.disconnect()  # a pool handed over is the caller's to close


def test_the_pool_answers_as_connections_do(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench's plain way (`FLASKCHAT_REDIS_DIRECT=0`): redis-py's pool for
    every command, with the same answers."""
    direct = RedisBackend(redis_url)
    monkeypatch.setenv("FLASKCHAT_REDIS_DIRECT", "0")
    pooled = RedisBackend(redis_url)
    try:
        assert direct._connections is not None and pooled._connections is None
        roomid = new_roomid()
        pooled.create_room(roomid, "pooled")
        newest = post(pooled, roomid, "hi")
        pooled.client.script_flush()  # loaded again through redis-py
        newer = post(pooled, roomid, "again")
        for backend in (direct, pooled):
            assert backend.latest_message_id(roomid) == newer
            assert [m.id for m in backend.messages_after(roomid, None, 5)] == [newest, newer]
            assert [m.text for m in backend.recent_messages(roomid, 5)] == ["hi", "again"]
            assert backend.message_author(roomid, newest) == "alice"
    finally:
        direct.close()
        pooled.close()
