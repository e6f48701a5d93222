"""The application factory: the only place that assembles things."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import bodies, limits, lobby, logs, metrics, rooms, web
from .backends import open_backend
from .backends.sqlite import SqliteBackend
from .cli import room_cli, store_cli
from .config_check import SettingError, check_settings, public_url
from .fanout import Fanout
from .settings import DEFAULTS
from .store import RoomStore


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. Settings load in a fixed order: defaults, the instance
    folder's `config.py`, `FLASKCHAT_*` environment variables, then `test_config`."""
    app = new_flask()
    config_loaded = load_settings(app, test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    logs.init_app(app)
    bodies.init_app(app)

    proxies = int(app.config["TRUSTED_PROXIES"])
    if proxies > 0:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies, x_prefix=proxies
        )

    app.url_map.converters["roomid"] = rooms.RoomIdConverter
    app.extensions["flaskchat"] = open_store(app)
    app.extensions["flaskchat_fanout"] = Fanout(app.extensions["flaskchat"], rooms.sse_record)
    web.install(app)
    metrics.init_app(app)
    app.register_blueprint(lobby.bp)
    app.register_blueprint(rooms.bp)
    limits.init_app(app)
    app.cli.add_command(store_cli)
    app.cli.add_command(room_cli)
    announce(app, config_loaded)
    return app


def new_flask() -> Flask:
    """The Flask object, named after the package rather than this module: an
    installed copy's instance folder is then <prefix>/var/flaskchat-instance, as
    documented (a checkout's is instance/ beside the package either way)."""
    return Flask("flaskchat", instance_relative_config=True)


def load_settings(app: Flask, test_config: Mapping[str, Any] | None = None) -> bool:
    """Load and check the settings in their order; True if `config.py` was read.
    Raises `SettingError` for a value that a setting does not take."""
    app.config.from_mapping(DEFAULTS)
    config_loaded = app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("FLASKCHAT")
    if test_config is not None:
        app.config.from_mapping(test_config)
    check_settings(app.config)
    return config_loaded


def check_settings_before_serving() -> None:
    """Load and check the settings as `create_app` will, opening nothing. The
    shipped gunicorn config calls it in the master (`on_starting`), so that a
    bad value stops gunicorn with one line before any worker starts, where each
    worker would say it again."""
    load_settings(new_flask())


def announce(app: Flask, config_loaded: bool) -> None:
    """Say where settings and data come from, once per server process (gunicorn's
    error log shows it): a `config.py` in another folder is otherwise ignored
    without a word. Tests and `flask` commands other than `run` stay quiet,
    so that a command's output is its own."""
    context = click.get_current_context(silent=True)
    if app.testing or (context is not None and context.command.name != "run"):
        return
    if app.logger.level == logging.NOTSET:
        app.logger.setLevel(logging.INFO)
    config_file = os.path.join(app.instance_path, "config.py")
    if config_loaded:
        settings = f"settings from {config_file} and FLASKCHAT_* environment variables"
    else:
        settings = f"no {config_file}: settings from defaults and FLASKCHAT_* variables"
    app.logger.info("Instance folder %s; %s.", app.instance_path, settings)
    backend = app.extensions["flaskchat"].backend
    if isinstance(backend, SqliteBackend):
        app.logger.info("Store: the SQLite file %s.", backend.path)
    else:
        app.logger.info("Store: %s.", public_url(str(app.config["STORE_URL"])))


def open_store(app: Flask) -> RoomStore:
    url = str(app.config["STORE_URL"])
    if url == "memory://" and not app.testing:
        app.logger.warning(
            "Serving from memory://: nothing survives a restart, and each worker"
            " process has rooms of its own. Set FLASKCHAT_STORE_URL for real use."
        )
    try:
        backend = open_backend(
            url,
            app.instance_path,
            redis_min_replicas=int(app.config["REDIS_MIN_REPLICAS"]),
            redis_wait_ms=int(app.config["REDIS_WAIT_MS"]),
        )
    except ValueError as error:  # a URL that passed its check but not the backend's
        raise SettingError(f"Setting STORE_URL (FLASKCHAT_STORE_URL): {error}") from None
    return RoomStore(
        backend,
        timezone_name=str(app.config["TIMEZONE"]),
        conversation_limit=int(app.config["CONVERSATION_LIMIT"]),
        max_message_length=int(app.config["MAX_MESSAGE_LENGTH"]),
        hash_method=str(app.config["PASSWORD_HASH_METHOD"]),
        max_users_per_room=int(app.config["MAX_USERS_PER_ROOM"]),
        max_tokens_per_user=int(app.config["MAX_TOKENS_PER_USER"]),
    )
