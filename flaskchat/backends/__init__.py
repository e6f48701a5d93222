"""Storage backends and the URL that picks one (`FLASKCHAT_STORE_URL`)."""

from __future__ import annotations

import importlib.util
import os

from .base import Backend, RoomDump, StoredMessage, UserRecord

__all__ = ["Backend", "RoomDump", "StoredMessage", "UserRecord", "open_backend"]


def open_backend(
    url: str,
    instance_path: str | os.PathLike[str] | None = None,
    *,
    redis_min_replicas: int = 0,
    redis_wait_ms: int = 500,
) -> Backend:
    """`memory://`, `sqlite:///relative.sqlite3` (inside `instance_path`),
    `sqlite:////absolute/path.sqlite3`, `redis://host:port/db` or
    `redis+cluster://host:port,host:port`. On Redis, a write answers only once
    `redis_min_replicas` replicas hold it (within `redis_wait_ms`)."""
    if url == "memory://":
        from .memory import MemoryBackend

        return MemoryBackend()
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteBackend

        path = url.removeprefix("sqlite:///")
        if not path:
            raise ValueError("A sqlite store URL needs a file name: sqlite:///name.sqlite3")
        if not os.path.isabs(path):
            path = os.path.join(instance_path or os.getcwd(), path)
        return SqliteBackend(path)
    if url.startswith(
        ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
    ):
        if importlib.util.find_spec("redis") is None:  # imported only when used
            raise ValueError(
                "A redis:// store needs the redis extra: pip install 'flaskchat[redis]'"
            )
        from .redis import RedisBackend

        return RedisBackend(url, min_replicas=redis_min_replicas, wait_ms=redis_wait_ms)
    raise ValueError(
        f"Unsupported store URL {url!r}: use sqlite:///file, redis://host:port/db,"
        " redis+cluster://host:port or memory://"
    )
