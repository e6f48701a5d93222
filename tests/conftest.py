"""Fixtures that describe the world: a real store (a SQLite file, or a private
redis-server), two app instances sharing it as two servers would, a client that
alternates between them, and a helper for the actions most tests repeat."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flaskchat import RoomStore, create_app

from actions import ChatActions
from support import RedisClusterServer, RedisServer, backend_url, close_app

STORES = ["sqlite", "redis"]
# Web test modules that also run on a Redis Cluster: the two-server tests of the
# API and of live streams, a representative part that keeps the suite short.
CLUSTER_MODULES = frozenset({"test_api", "test_live", "test_owners_api"})


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; tests flush it before use."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """An empty Redis database."""
    redis_server.flush()
    return redis_server.redis_url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """One private Redis Cluster (three masters, three replicas) for the session."""
    cluster = RedisClusterServer(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServer) -> str:
    """An empty Redis Cluster, back to three masters each with a replica."""
    redis_cluster.restore()
    redis_cluster.flush()
    return redis_cluster.cluster_url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The stores a test of `store_url` runs on: every module on SQLite and Redis,
    the modules of `CLUSTER_MODULES` on a Redis Cluster too."""
    if "store_kind" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        metafunc.parametrize(
            "store_kind", [*STORES, "cluster"] if module in CLUSTER_MODULES else STORES
        )


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(store_kind, request, tmp_path)


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Settings the tests of a module want on top of the defaults."""
    return {}


@pytest.fixture
def make_app(store_url: str, app_config: dict[str, Any]) -> Iterator[Callable[[], Flask]]:
    """Build apps on the shared store; each is what one server process would run."""
    apps: list[Flask] = []

    def build() -> Flask:
        app = create_app({"TESTING": True, "STORE_URL": store_url, **app_config})
        apps.append(app)
        return app

    yield build
    for app in apps:
        close_app(app)


@pytest.fixture
def app(make_app: Callable[[], Flask]) -> Flask:
    return make_app()


@pytest.fixture
def twin(make_app: Callable[[], Flask]) -> Flask:
    """A second server on the same store."""
    return make_app()


class AlternatingClient:
    """Sends each request to the next of several servers in turn, so every test
    that uses it checks that two servers on one store behave as one."""

    def __init__(self, *clients: FlaskClient) -> None:
        self._clients = itertools.cycle(clients)

    def open(self, *args: Any, **kwargs: Any) -> Any:
        return next(self._clients).open(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return next(self._clients).get(*args, **kwargs)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return next(self._clients).post(*args, **kwargs)


@pytest.fixture
def client(app: Flask, twin: Flask) -> AlternatingClient:
    return AlternatingClient(app.test_client(), twin.test_client())


@pytest.fixture
def store(app: Flask) -> RoomStore:
    return app.extensions["flaskchat"]  # type: ignore[no-any-return]


@pytest.fixture
def chat(client: FlaskClient) -> ChatActions:
    return ChatActions(client)
