"""Rate limits (Flask-Limiter) and the per-IP cap on open event streams.

Limits are keyed by the client IP from the socket; `ProxyFix` (set up by
`create_app` only when `TRUSTED_PROXIES` says so) is what lets a proxy's
`X-Forwarded-For` change it, so a forged header never moves a budget. Each
limit's value is a setting, read at request time.

The failed-login lock-out charges every attempt before its password check, so
guesses sent at once are checked no more often than the budget allows, and
gives back every attempt that did not fail (`give_back_unfailed`). It counts
per account and address, so a stranger cannot lock a member out, and per
account with a larger budget, which slows a guesser with many addresses.
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
from .backends.sqlite import SqliteBackend
from .errors import InvalidInput
from .limit_storage import storage_uri, take_back


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
        name = "?"  # no valid name looks like this
    return f"{roomid}:{name}"


def address_and_account() -> str:
    """Key for the lock-out of one account from one client address."""
    return f"{client_ip()}|{room_user()}"


def room_owner() -> str:
    """Key for the lock-out of one client address from a room's owner powers."""
    return f"{client_ip()}|{(request.view_args or {}).get('roomid', '')}:owner"


def setting(name: str) -> Callable[[], str]:
    return lambda: str(current_app.config[name])


def answered(status: int) -> Callable[[Response], bool]:
    """Deduct from a budget only for replies with this status."""
    return lambda response: response.status_code == status


# The scope of lock-out limits: charged when a request arrives, given back
# unless it was answered 401 (see `give_back_unfailed`).
LOCKOUT = "lockout"

# Which limits guard which endpoint: (setting holding the limit, Flask-Limiter options).
ROUTE_LIMITS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "lobby.create_room": [("RATELIMIT_CREATEROOM", {})],
    "rooms.register": [("RATELIMIT_REGISTER", {})],
    "rooms.login": [
        ("RATELIMIT_LOGIN", {}),
        ("RATELIMIT_LOGIN_FAILURES", {"key_func": address_and_account, "scope": LOCKOUT}),
        ("RATELIMIT_LOGIN_ACCOUNT", {"key_func": room_user, "scope": LOCKOUT}),
    ],
    "rooms.message": [
        ("RATELIMIT_MESSAGE_IP", {}),
        ("RATELIMIT_MESSAGE_USER", {"key_func": room_user, "deduct_when": answered(200)}),
    ],
    "rooms.ticket": [("RATELIMIT_TICKET", {})],
    **{
        f"rooms.{view}": [("RATELIMIT_OWNER_FAILURES", {"key_func": room_owner, "scope": LOCKOUT})]
        for view in (
            "delete_message",
            "ban",
            "unban",
            "settings",
            "update_settings",
            "export",
            "rotate_owner_key",
            "delete_room",
        )
    },
}


def init_app(app: Flask) -> None:
    """Give `app` a limiter of its own and put the limits of `ROUTE_LIMITS` on its
    registered views. Counts are shared by every process that uses the same
    store unless `RATELIMIT_STORAGE_URI` says otherwise (`default_storage_uri`)."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", default_storage_uri(app))
    limiter = Limiter(client_ip, app=app)
    for endpoint, route_limits in ROUTE_LIMITS.items():
        view: Callable[..., Any] = app.view_functions[endpoint]
        for name, options in route_limits:
            view = limiter.limit(setting(name), **options)(view)
        app.view_functions[endpoint] = view
    # Runs before the limiter's own hook, so its headers count what was given back.
    app.after_request(give_back_unfailed)
    # The limits hold the limiter only weakly: the app keeps it alive.
    app.extensions["flaskchat_limiter"] = limiter
    app.extensions["flaskchat_streams"] = StreamCounter()


def default_storage_uri(app: Flask) -> str:
    """Where counts live: beside a SQLite store in a file of their own (every
    worker of the machine counts together), in the chat store's Redis (every
    server does), or, for `memory://`, in each process."""
    store_url = str(app.config["STORE_URL"])
    if store_url.startswith(("redis://", "rediss://")):
        return store_url
    if store_url.startswith("redis+cluster://"):  # the `limits` library's own scheme
        return store_url.split("?", 1)[0]
    if store_url.startswith("unix://"):
        return "redis+" + store_url
    backend = app.extensions["flaskchat"].backend
    if isinstance(backend, SqliteBackend):
        return storage_uri(f"{backend.path}.limits")
    return "memory://"


def give_back_unfailed(response: Response) -> Response:
    """Lock-out limits are charged before the password is checked; an attempt
    that did not fail the check (a success, a bad request, a refusal) is given
    back here, so only failed checks use up the budget."""
    if response.status_code == 401:
        return response
    limiter: Limiter = current_app.extensions["flaskchat_limiter"]
    for charged in limiter.current_limits:
        if charged.breached or not charged.request_args[-1].endswith(f":{LOCKOUT}"):
            continue
        try:
            take_back(limiter.limiter, charged.key)
        except Exception:
            if not current_app.config["RATELIMIT_SWALLOW_ERRORS"]:
                raise
            current_app.logger.exception("Could not give back a lock-out charge")
    return response


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
