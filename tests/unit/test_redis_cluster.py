"""A Redis Cluster as a store: rooms spread over every master, one watcher
connection per node, rate limits in the cluster, and writes that wait for
replicas when asked."""

from __future__ import annotations

import threading

import pytest

from flaskchat import RoomStore, create_app
from flaskchat.backends.redis import RedisBackend
from flaskchat.errors import StoreUnavailable
from flaskchat.limits import default_storage_uri

from support import RedisClusterServer, close_app


def test_rooms_land_on_every_master_and_wake_listeners_across_stores(
    redis_cluster: RedisClusterServer, redis_cluster_url: str
) -> None:
    """Two stores stand for two servers: messages written through one wake the
    listeners of the other, whichever master holds the room."""
    writer, reader = RoomStore.from_url(redis_cluster_url), RoomStore.from_url(redis_cluster_url)
    try:
        rooms = [writer.create_room(f"room {n}") for n in range(40)]
        owners = {redis_cluster.master_of(f"flaskchat:{{{r}}}:messages").port for r in rooms}
        assert len(owners) == 3
        picked = {redis_cluster.master_of(f"flaskchat:{{{r}}}:messages").port: r for r in rooms}
        tokens = {}
        for roomid in picked.values():
            writer.register(roomid, "alice", "correct horse battery")
            tokens[roomid] = writer.login(roomid, "alice", "correct horse battery")
        streams = {roomid: reader.follow(roomid, keepalive=60) for roomid in picked.values()}
        results: dict[str, object] = {}
        threads = []
        for roomid, stream in streams.items():
            next(stream)  # presence
            thread = threading.Thread(
                target=lambda r=roomid, s=stream: results.__setitem__(r, next(s))
            )
            thread.start()
            threads.append(thread)
        for roomid in picked.values():
            writer.post_message(roomid, "alice", tokens[roomid], f"hello {roomid}")
        for thread in threads:
            thread.join(15)
        assert {r: getattr(m, "text", None) for r, m in results.items()} == {
            r: f"hello {r}" for r in picked.values()
        }
        for stream in streams.values():
            stream.close()
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1",
        "redis+cluster://127.0.0.1:notaport",
        "redis+cluster://127.0.0.1:1?min_replicas=many",
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|whole number"):
        RedisBackend(url)


def test_an_unreachable_cluster_is_one_line(redis_cluster: RedisClusterServer) -> None:
    with pytest.raises(ValueError, match="no node of the Redis Cluster answers"):
        RedisBackend("redis+cluster://127.0.0.1:1")


def test_rate_limits_count_in_the_cluster(redis_cluster_url: str) -> None:
    config = {
        "TESTING": True,
        "STORE_URL": redis_cluster_url + "?min_replicas=0",
        "RATELIMIT_CREATEROOM": "2/minute",
    }
    apps = [create_app(config), create_app(config)]
    try:
        assert default_storage_uri(apps[0]) == redis_cluster_url
        statuses = [
            apps[n % 2].test_client().post("/createroom", json={"alias": "x"}).status_code
            for n in range(3)
        ]
        assert statuses == [200, 200, 429]
    finally:
        for app in apps:
            close_app(app)


def test_a_write_without_enough_replicas_is_503_and_its_retry_stores_one_copy(
    redis_url: str,
) -> None:
    """The session's redis-server has no replica: nothing is confirmed."""
    waiting = RoomStore.from_url(redis_url + "?min_replicas=1&wait_ms=50")
    plain = RoomStore.from_url(redis_url)
    try:
        roomid = plain.create_room("waits")
        plain.register(roomid, "alice", "correct horse battery")
        token = plain.login(roomid, "alice", "correct horse battery")
        with pytest.raises(StoreUnavailable, match="replicas"):
            waiting.post_message(roomid, "alice", token, "once", client_id="c-1")
        with pytest.raises(StoreUnavailable):
            waiting.create_room("never acknowledged")
        plain.post_message(roomid, "alice", token, "once", client_id="c-1")
        assert [line.split("> ", 1)[1] for line in plain.conversation(roomid)] == ["once"]
    finally:
        waiting.close()
        plain.close()


def test_writes_wait_for_a_cluster_replica(redis_cluster_url: str) -> None:
    store = RoomStore.from_url(redis_cluster_url + "?min_replicas=1&wait_ms=2000")
    try:
        roomid = store.create_room("replicated")
        store.register(roomid, "alice", "correct horse battery")
        token = store.login(roomid, "alice", "correct horse battery")
        store.post_message(roomid, "alice", token, "safe", client_id="c-1")
        store.post_message(roomid, "alice", token, "safe", client_id="c-1")
        assert len(store.conversation(roomid)) == 1
    finally:
        store.close()


def test_a_closed_store_stops_its_cluster_watch_even_while_it_waits(
    redis_cluster_url: str,
) -> None:
    """The watcher thread may be waiting on the nodes when the store is closed
    from another thread. It once read a connection that `close` had just let
    go (a TypeError in the watcher thread), and subscribed again afterwards,
    opening connections that nothing would close."""
    backend = RedisBackend(redis_cluster_url)
    store = RoomStore(backend)
    rooms = [store.create_room(f"room {n}") for n in range(6)]
    watch = backend._shards  # type: ignore[attr-defined]
    assert watch.wait(rooms, 0.1) == set(rooms)  # subscribed: reported once
    errors: list[BaseException] = []
    returned: list[set[str]] = []

    def watcher() -> None:
        try:
            for _ in range(50):
                returned.append(watch.wait(rooms, 0.02))
        except BaseException as exc:  # the watcher must not die of a close
            errors.append(exc)

    thread = threading.Thread(target=watcher)
    thread.start()
    store.close()
    thread.join(10)
    assert not thread.is_alive() and errors == []
    assert watch.wait(rooms, 0.1) == set()  # closed: reports nothing
    assert watch._nodes == {}  # and opened no connection again
