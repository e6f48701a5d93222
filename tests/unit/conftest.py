"""A `RoomStore` on each backend, so one contract suite runs against all of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskchat import RoomStore

from support import backend_url

BACKENDS = ["memory", "sqlite", "redis", "cluster"]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def room_store(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[RoomStore]:
    store = RoomStore.from_url(backend_url(backend_kind, request, tmp_path))
    yield store
    store.close()
