"""The SQLite backend answers a repeated `latest_message_id` from memory while
the reader's `PRAGMA data_version` says nothing was committed, and asks SQLite
again as soon as any connection, of this process or another, commits."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from flaskchat import RoomStore
from flaskchat.backends.sqlite import SqliteBackend

PASSWORD = "correct horse battery"

POST_FROM_ANOTHER_PROCESS = """
import sys
from flaskchat import RoomStore
store = RoomStore.from_url(sys.argv[1], hash_method="scrypt:1024:8:1")
store.post_message(sys.argv[2], "alice", sys.argv[3], "from another process")
store.close()
"""


def newest_queries(queries: list[str]) -> int:
    count = len([q for q in queries if "MAX(seq)" in q])
    queries.clear()
    return count


def test_polls_ask_sqlite_again_only_after_a_commit_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    url = f"sqlite:///{path}"
    store = RoomStore.from_url(url, hash_method="scrypt:1024:8:1")
    backend = store.backend
    assert isinstance(backend, SqliteBackend)
    roomid, quiet = store.create_room("polled"), store.create_room("quiet")
    store.register(roomid, "alice", PASSWORD)
    token = store.login(roomid, "alice", PASSWORD)
    first = store.post_message(roomid, "alice", token, "one")
    assert backend.latest_message_id(roomid) == first.id
    assert backend._reader is not None
    queries: list[str] = []
    backend._reader.set_trace_callback(queries.append)

    for _ in range(3):
        assert backend.latest_message_id(roomid) == first.id
    assert newest_queries(queries) == 0  # answered from memory

    second = store.post_message(roomid, "alice", token, "two")  # this process's writer
    assert backend.latest_message_id(roomid) == second.id
    assert backend.latest_message_id(roomid) == second.id
    assert newest_queries(queries) == 1

    subprocess.run(
        [sys.executable, "-c", POST_FROM_ANOTHER_PROCESS, url, roomid, token], check=True
    )
    assert store.conversation(roomid)[-1].endswith("<alice> from another process")
    assert newest_queries(queries) == 1

    with sqlite3.connect(path) as outside:  # a plain connection, as the sqlite3 shell
        outside.execute(
            "INSERT INTO messages (room_id, seq, name_key, username, body, posted_at_us)"
            " VALUES (?, 1000, 'alice', 'alice', 'typed in the shell', 0)",
            (roomid,),
        )
    assert backend.latest_message_id(roomid) == "1000"
    assert backend.latest_message_id(quiet) is None  # rooms are cached apart
    assert backend.latest_message_id(roomid) == "1000"
    assert newest_queries(queries) == 2

    backend._reader = None  # a new reader: its data_version says nothing of the old one's
    assert backend.latest_message_id(roomid) == "1000"
    store.close()
