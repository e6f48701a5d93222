"""Rate limits (Flask-Limiter) and the per-IP cap on open event streams.

Limits are keyed by the client IP from the socket; `ProxyFix` (set up by
`create_app` only when `TRUSTED_PROXIES` says so) is what lets a proxy's
`X-Forwarded-For` change it, so a forged header never moves a budget. Each
limit's value is a setting, read at request time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter
from werkzeug.exceptions import HTTPException, TooManyRequests

from . import rules
from .errors import InvalidInput


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _body_field(name: str) -> str:
    """A string field of the JSON body, or "" (the view reports bad bodies)."""
    try:
        body = request.get_json(silent=True)
    except (HTTPException, RecursionError):  # too large, too deep: no budget to pick
        return ""
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def room_user() -> str:
    """Key for limits that follow one account: the room and the name as the
    store compares it (so `Alice` and `alice` share a budget)."""
    roomid = (request.view_args or {}).get("roomid", "")
    try:
        name = rules.username_key(_body_field("username"))
    except InvalidInput:
        name = "-"
    return f"{roomid}:{name}"


def setting(name: str) -> Callable[[], str]:
    return lambda: str(current_app.config[name])


def answered(status: int) -> Callable[[Response], bool]:
    """Deduct from a budget only for replies with this status."""
    return lambda response: response.status_code == status


# Which limits guard which endpoint: (setting holding the limit, Flask-Limiter options).
ROUTE_LIMITS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "lobby.create_room": [("RATELIMIT_CREATEROOM", {})],
    "rooms.register": [("RATELIMIT_REGISTER", {})],
    "rooms.login": [
        ("RATELIMIT_LOGIN", {}),
        ("RATELIMIT_LOGIN_FAILURES", {"key_func": room_user, "deduct_when": answered(401)}),
    ],
    "rooms.message": [
        ("RATELIMIT_MESSAGE_IP", {}),
        ("RATELIMIT_MESSAGE_USER", {"key_func": room_user, "deduct_when": answered(200)}),
    ],
    "rooms.ticket": [("RATELIMIT_TICKET", {})],
}


def init_app(app: Flask) -> None:
    """Give `app` a limiter of its own and put the limits of `ROUTE_LIMITS` on its
    registered views. Counts are shared through the chat store's Redis when there
    is one; otherwise through `RATELIMIT_STORAGE_URI` (default: each process
    counts on its own)."""
    if "RATELIMIT_STORAGE_URI" not in app.config:
        store_url = str(app.config["STORE_URL"])
        shared = store_url.startswith(("redis://", "rediss://"))
        app.config["RATELIMIT_STORAGE_URI"] = store_url if shared else "memory://"
    limiter = Limiter(client_ip, app=app)
    for endpoint, route_limits in ROUTE_LIMITS.items():
        view: Callable[..., Any] = app.view_functions[endpoint]
        for name, options in route_limits:
            view = limiter.limit(setting(name), **options)(view)
        app.view_functions[endpoint] = view
    # The limits hold the limiter only weakly: the app keeps it alive.
    app.extensions["flaskchat_limiter"] = limiter
    app.extensions["flaskchat_streams"] = StreamCounter()


# Seconds a client over the stream cap is told to wait.
STREAM_RETRY_AFTER = 10


class StreamCounter:
    """Open event streams per client IP in this process, behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def claim(self, ip: str, limit: int) -> Callable[[], None]:
        """Count one stream for `ip`, or 429 past `limit`; returns the release,
        which the response calls when the stream closes."""
        with self._lock:
            if self._open[ip] >= limit:
                raise TooManyRequests(
                    f"You have {limit} live connections open already. "
                    "Please close a tab and try again.",
                    retry_after=STREAM_RETRY_AFTER,
                )
            self._open[ip] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._open[ip] -= 1
                if self._open[ip] <= 0:
                    del self._open[ip]

        return release
