"""Default settings. Each can be overridden in `instance/config.py` or as a
`FLASKCHAT_<NAME>` environment variable (parsed as JSON where it parses)."""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    # Relative SQLite paths are resolved inside the instance folder.
    "STORE_URL": "sqlite:///flaskchat.sqlite3",
    # IANA zone in which the seed's message lines are written.
    "TIMEZONE": "UTC",
    # How many lines `get_conversation` returns.
    "CONVERSATION_LIMIT": 50,
    "MAX_MESSAGE_LENGTH": 2000,
    # How many reverse proxies in front of the app may set X-Forwarded-* headers.
    "TRUSTED_PROXIES": 0,
    # werkzeug's password hash method; the default is scrypt:32768:8:1.
    "PASSWORD_HASH_METHOD": "scrypt",
    # Seconds of silence after which an event stream sends a keep-alive comment.
    "SSE_KEEPALIVE": 15.0,
    # No JSON body we accept comes near this; larger requests get 413.
    "MAX_CONTENT_LENGTH": 64 * 1024,
}
