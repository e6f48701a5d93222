"""The per-room account cap holds when many registrations arrive at once, spread
over two servers on one store."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask

from flaskchat import RoomStore

from actions import PASSWORD, ChatActions


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {
        "MAX_USERS_PER_ROOM": 5,
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1",
        "RATELIMIT_ENABLED": False,
    }


def test_concurrent_registrations_on_two_servers_stop_at_the_cap(
    app: Flask, twin: Flask, chat: ChatActions, store: RoomStore
) -> None:
    roomid = chat.create_room()
    start = threading.Barrier(40)
    replies: list[tuple[int, Any]] = []

    def register(n: int) -> None:
        client = (app if n % 2 else twin).test_client()
        start.wait()
        response = client.post(
            f"/{roomid}/register", json={"username": f"user{n}", "password": PASSWORD}
        )
        replies.append((response.status_code, response.json))

    threads = [threading.Thread(target=register, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in replies)
    assert statuses == [200] * 5 + [403] * 35
    refusal = next(body for status, body in replies if status == 403)
    assert refusal == {
        "succeeded": False,
        "explanation": "This room has reached its limit of 5 accounts.",
    }
    assert len(store.snapshot()[roomid]["users"]) == 5
