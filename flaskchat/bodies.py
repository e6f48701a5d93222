"""Request bodies are read in full, against a deadline, before the app sees them.

Otherwise a body sent a byte every few seconds holds its connection for as long
as the client likes, a malformed chunked body surfaces as the server's own
exception (a 500), and werkzeug cuts a chunked body over `MAX_CONTENT_LENGTH`
short instead of refusing it. Here each of these becomes an HTTP error (408,
400, 413) raised when the view reads the body, so the reply keeps that view's
shape; gunicorn closes a connection whose body failed to read.
"""

from __future__ import annotations

import contextlib
import io
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.http import parse_set_header
from werkzeug.wsgi import get_content_length

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

# Bytes asked of the server's input stream at a time.
READ_SIZE = 16 * 1024

TOO_SLOW = "The request took too long to arrive. Please try again."
MALFORMED = "The request body is malformed or incomplete."


class BodyTimeout(Exception):
    """The body missed its deadline. An `Exception` (unlike `gevent.Timeout`),
    so gunicorn's body reader records the failure and drops the connection."""


class UnreadableBody(io.RawIOBase):
    """Stands in for a body that could not be read: reading it raises `error`."""

    def __init__(self, error: HTTPException) -> None:
        super().__init__()
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


class BufferedBodies:
    """WSGI middleware: hands the app each request body as a `BytesIO`, read
    within `timeout` seconds and at most `max_length` bytes (None: no limit).

    Under gevent (the shipped gunicorn config) the deadline covers the whole
    body. Elsewhere it is enforced through the connection socket's timeout,
    which bounds each wait: a stalled body is cut, but one trickling in a byte
    at a time can last longer than `timeout`.
    """

    def __init__(self, app: WSGIApplication, max_length: int | None, timeout: float) -> None:
        self.app = app
        self.max_length = max_length
        self.timeout = timeout

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.buffer(environ)
        return self.app(environ, start_response)

    def buffer(self, environ: WSGIEnvironment) -> None:
        declared = get_content_length(environ)  # None when chunked
        chunked = declared is None and "chunked" in parse_set_header(
            environ.get("HTTP_TRANSFER_ENCODING")
        )
        if not (chunked or declared):
            return
        if declared is not None and self.max_length is not None and declared > self.max_length:
            return  # werkzeug answers 413 from the header, without reading
        # A chunked body may be one byte longer than allowed: that byte says "too large".
        limit = declared if not chunked or self.max_length is None else self.max_length + 1
        environ["wsgi.input_terminated"] = True
        try:
            body = read_within(environ, limit, self.timeout)
        except BodyTimeout:
            self.refuse(environ, RequestTimeout(TOO_SLOW))
            return
        except Exception:  # the server's own parse errors (a bad chunk size), a hang-up
            self.refuse(environ, BadRequest(MALFORMED))
            return
        if declared is not None and len(body) < declared:
            self.refuse(environ, BadRequest(MALFORMED))
        elif self.max_length is not None and len(body) > self.max_length:
            self.refuse(environ, RequestEntityTooLarge())
        else:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)

    @staticmethod
    def refuse(environ: WSGIEnvironment, error: HTTPException) -> None:
        environ["wsgi.input"] = UnreadableBody(error)


def read_within(environ: WSGIEnvironment, limit: int | None, timeout: float) -> bytes:
    """Up to `limit` bytes of the body (all of it for None), or `BodyTimeout`."""
    stream = environ["wsgi.input"]
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        from gevent import Timeout

        with Timeout(timeout, BodyTimeout):
            return read_all(stream, limit)
    connection = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(connection, socket.socket):
        return read_all(stream, limit)  # no server socket: an in-memory test request
    deadline = time.monotonic() + timeout
    before = connection.gettimeout()

    def wait_no_longer() -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout()
        connection.settimeout(remaining)

    try:
        return read_all(stream, limit, wait_no_longer)
    except TimeoutError:
        raise BodyTimeout() from None
    finally:
        with contextlib.suppress(OSError):
            connection.settimeout(before)


def read_all(
    stream: Any, limit: int | None, before_read: Callable[[], None] = lambda: None
) -> bytes:
    """Read `stream` to its end or to `limit` bytes, in pieces, so that
    `before_read` can shorten each wait to what is left of the deadline."""
    parts: list[bytes] = []
    total = 0
    while limit is None or total < limit:
        before_read()
        piece = stream.read(READ_SIZE if limit is None else min(READ_SIZE, limit - total))
        if not piece:
            break
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)


def init_app(app: Flask) -> None:
    """Put `BufferedBodies` in front of `app`, with its settings."""
    max_length = app.config["MAX_CONTENT_LENGTH"]
    app.wsgi_app = BufferedBodies(  # type: ignore[method-assign]
        app.wsgi_app,
        None if max_length is None else int(max_length),
        float(app.config["REQUEST_BODY_TIMEOUT"]),
    )
