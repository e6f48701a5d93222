"""The application factory: the only place that assembles things."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import bodies, limits, lobby, logs, rooms, web
from .cli import room_cli, store_cli
from .settings import DEFAULTS
from .store import RoomStore


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. Settings load in a fixed order: defaults, the instance
    folder's `config.py`, `FLASKCHAT_*` environment variables, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("FLASKCHAT")
    if test_config is not None:
        app.config.from_mapping(test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    logs.init_app(app)

    if int(app.config["MAX_STREAMS_PER_IP"]) > int(app.config["MAX_CONNECTIONS_PER_IP"]):
        raise ValueError(
            "MAX_STREAMS_PER_IP must not be above MAX_CONNECTIONS_PER_IP: each event"
            " stream is one of its client's connections."
        )
    bodies.init_app(app)

    proxies = int(app.config["TRUSTED_PROXIES"])
    if proxies > 0:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_prefix=proxies
        )

    app.url_map.converters["roomid"] = rooms.RoomIdConverter
    app.extensions["flaskchat"] = open_store(app)
    web.install(app)
    app.register_blueprint(lobby.bp)
    app.register_blueprint(rooms.bp)
    limits.init_app(app)
    app.cli.add_command(store_cli)
    app.cli.add_command(room_cli)
    return app


def open_store(app: Flask) -> RoomStore:
    url = str(app.config["STORE_URL"])
    if url == "memory://" and not app.testing:
        app.logger.warning(
            "Serving from memory://: nothing survives a restart, and each worker"
            " process has rooms of its own. Set FLASKCHAT_STORE_URL for real use."
        )
    return RoomStore.from_url(
        url,
        instance_path=app.instance_path,
        timezone_name=str(app.config["TIMEZONE"]),
        conversation_limit=int(app.config["CONVERSATION_LIMIT"]),
        max_message_length=int(app.config["MAX_MESSAGE_LENGTH"]),
        hash_method=str(app.config["PASSWORD_HASH_METHOD"]),
        max_users_per_room=int(app.config["MAX_USERS_PER_ROOM"]),
        max_tokens_per_user=int(app.config["MAX_TOKENS_PER_USER"]),
    )
