"""Log lines that no client can forge and that never show a room id.

A room id is its room's only key, and logs are read by more people (and kept
longer) than rooms are, so a logged room id becomes its short form: `r:` and the
first six hex digits of its HMAC-SHA256. The HMAC key is derived from
`SECRET_KEY` when set, else generated once and kept in the instance folder, so
the short form is the same in every worker and across restarts of one
installation (lines can be correlated) and cannot be traced back to the room
without the key. An operator holding a room id finds its lines with
`flask --app flaskchat room log-id ROOMID` or `room_log_id(app, roomid)`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_request_context, request

from . import rules

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

KEY_FILE = "room-log-id.key"
# The WSGI environ key under which the app hands the server its `RoomLogIds`,
# so the server's access log can shorten room ids as the app's own log does.
ENVIRON_KEY = "flaskchat.room_log_ids"
EXTENSION = "flaskchat_room_log_ids"
# What a room id becomes where no key is at hand: hidden, but not correlated.
UNKNOWN_ROOM = "r:??????"


def escape(text: str) -> str:
    """`text` with every non-printable character (controls, line and paragraph
    separators, bidi and other format characters, odd spaces) written as a Python
    escape, so that one record stays one line and reads in the order it is stored."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def log_key(secret_key: str | bytes | None, instance_path: str) -> bytes:
    """The installation's HMAC key for room log ids: derived from `secret_key`
    when there is one (so every server sharing it agrees), else read from the
    instance folder, where the first process to need it creates it."""
    if secret_key:
        secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
        return hmac.new(secret, b"flaskchat room log id", hashlib.sha256).digest()
    path = os.path.join(instance_path, KEY_FILE)
    if not os.path.exists(path):
        _create_key_file(path)
    with open(path, encoding="ascii") as file:
        return bytes.fromhex(file.read().strip())


def _create_key_file(path: str) -> None:
    """Write a new key beside `path` and link it into place: a worker starting at
    the same moment then either finds the whole key or makes the one that wins."""
    draft = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(secrets.token_hex(32) + "\n")
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(draft)


class RoomLogIds:
    """Turns room ids, and paths that start with one, into what the logs show."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def short(self, roomid: str) -> str:
        digest = hmac.new(self._key, roomid.encode(), hashlib.sha256).hexdigest()
        return "r:" + digest[:6]

    def path(self, path: str) -> str:
        """`path` with its first segment, when shaped like a room id, shortened."""
        return loggable_path(path, self.short)


def loggable_path(path: str, short: Callable[[str], str] | None) -> str:
    """`path` as logs show it: a first segment shaped like a room id becomes its
    short form (`UNKNOWN_ROOM` when `short` is None). Not escaped."""
    if not path.startswith("/"):
        return path
    first, slash, rest = path[1:].partition("/")
    if not rules.looks_like_roomid(first):
        return path
    return "/" + (short(first) if short else UNKNOWN_ROOM) + slash + rest


def room_log_id(app: Flask, roomid: str) -> str:
    """The short form under which `roomid` appears in `app`'s logs and in the
    access log of the server that runs it."""
    ids: RoomLogIds = app.extensions[EXTENSION]
    return ids.short(roomid)


class SafeRecords(logging.Filter):
    """Makes every record of the app's logger (and the rate limiter's) one line
    that shows no room id: the
    request's path is shortened wherever the message quotes it (Flask's own
    "Exception on <path>" included), then non-printable characters are escaped.
    Tracebacks are left as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken call: let the handler report it as usual
            return True
        if has_request_context() and request.path != "/":
            ids: RoomLogIds | None = current_app.extensions.get(EXTENSION)
            raw = request.path
            message = message.replace(raw, loggable_path(raw, ids.short if ids else None))
            # Elsewhere too: Flask-Limiter's line quotes its keys, which hold the room.
            roomid = (request.view_args or {}).get("roomid")
            if isinstance(roomid, str) and rules.looks_like_roomid(roomid):
                message = message.replace(roomid, ids.short(roomid) if ids else UNKNOWN_ROOM)
        record.msg, record.args = escape(message), ()
        return True


# One instance, so that apps sharing a logger (as tests do) add it only once.
SAFE_RECORDS = SafeRecords()


def init_app(app: Flask) -> None:
    """Load the installation's key, filter the app's log, and hand the key's
    `RoomLogIds` to the server through each request's environ."""
    ids = RoomLogIds(log_key(app.config.get("SECRET_KEY"), app.instance_path))
    app.extensions[EXTENSION] = ids
    app.logger.addFilter(SAFE_RECORDS)
    # The rate limiter logs each refusal (at INFO) with its key: room and name.
    logging.getLogger("flask-limiter").addFilter(SAFE_RECORDS)
    inner = app.wsgi_app

    def tell_server(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[ENVIRON_KEY] = ids
        return inner(environ, start_response)

    app.wsgi_app = tell_server  # type: ignore[method-assign]


def environ_ids(environ: dict[str, Any]) -> RoomLogIds | None:
    """The `RoomLogIds` the app put in a request's environ, if it did."""
    ids = environ.get(ENVIRON_KEY)
    return ids if isinstance(ids, RoomLogIds) else None
