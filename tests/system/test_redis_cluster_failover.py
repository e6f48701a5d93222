"""A master of the Redis Cluster dies under load: with `REDIS_MIN_REPLICAS=1`
every message acknowledged with 200 is still there, exactly once, after its
replica takes over."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from flaskchat import create_app

from support import RedisClusterServer, close_app

pytestmark = pytest.mark.system


def test_acknowledged_messages_survive_a_master_crash_exactly_once(
    redis_cluster: RedisClusterServer, redis_cluster_url: str
) -> None:
    app = create_app(
        {
            "TESTING": True,
            "STORE_URL": redis_cluster_url,
            "REDIS_MIN_REPLICAS": 1,
            "REDIS_WAIT_MS": 1000,
            "RATELIMIT_ENABLED": False,
        }
    )
    client = app.test_client()
    store = app.extensions["flaskchat"]
    rooms = [store.create_room(f"room {n}") for n in range(6)]
    tokens = {}
    for roomid in rooms:
        store.register(roomid, "alice", "correct horse battery")
        tokens[roomid] = store.login(roomid, "alice", "correct horse battery")
    acknowledged: list[tuple[str, str]] = []
    refused = Counter[int]()
    stop = threading.Event()

    def post_until_acknowledged(n: int) -> None:
        roomid, text = rooms[n % len(rooms)], f"message {n}"
        body = {"username": "alice", "token": tokens[roomid], "message": text}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reply = client.post(f"/{roomid}/message", json={**body, "client_id": f"c{n}"})
            if reply.status_code == 200:
                acknowledged.append((roomid, text))
                return
            refused[reply.status_code] += 1
            time.sleep(0.05)  # the same client_id again, as a client retries

    def poster() -> None:
        n = 0
        while not stop.is_set():
            post_until_acknowledged(n)
            n += 1

    thread = threading.Thread(target=poster)
    thread.start()
    try:
        time.sleep(1)
        victim = redis_cluster.master_of(f"flaskchat:{{{rooms[0]}}}:messages")
        victim.stop(signal.SIGKILL)
        redis_cluster.wait_until_ok(whole=False)  # a replica took over
        redis_cluster.restore()  # the old master is back, as a replica
        before = len(acknowledged)
        deadline = time.monotonic() + 30
        while len(acknowledged) < before + 30 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(90)
    assert len(acknowledged) >= before + 30, "service did not come back"
    assert refused[503], "the killed master never made a write wait"
    stored = Counter[tuple[str, str]]()
    for roomid in rooms:
        for message in store.backend.messages_after(roomid, None, 10_000):
            stored[(roomid, message.text)] += 1
    assert all(count == 1 for count in stored.values()), stored.most_common(3)
    missing = [m for m in acknowledged if stored[m] != 1]
    assert not missing, missing[:5]
    close_app(app)
