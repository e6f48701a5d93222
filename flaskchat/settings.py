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
    # Host names the app answers to (Flask's setting), e.g. ["chat.example.org"]; others get 400.
    "TRUSTED_HOSTS": None,
    # On Redis, replicas that must hold each write before it is acknowledged (WAIT);
    # with too few, the write answers 503 and a retry stores nothing twice.
    "REDIS_MIN_REPLICAS": 0,
    # Milliseconds a write waits for those replicas.
    "REDIS_WAIT_MS": 500,
    # werkzeug's password hash method; the default is scrypt:32768:8:1.
    "PASSWORD_HASH_METHOD": "scrypt",
    # Seconds of silence after which an event stream sends a keep-alive comment.
    "SSE_KEEPALIVE": 15.0,
    # Rate limits (Flask-Limiter's settings and syntax). Per client IP unless said.
    "RATELIMIT_STRATEGY": "moving-window",
    "RATELIMIT_HEADERS_ENABLED": True,
    # If the limit storage is unreachable, serve anyway: the store answers 503 itself.
    "RATELIMIT_SWALLOW_ERRORS": True,
    "RATELIMIT_CREATEROOM": "10/minute;100/day",
    "RATELIMIT_REGISTER": "10/minute;100/day",
    "RATELIMIT_LOGIN": "30/minute",
    # Per room, username and client IP, counting failed logins only: the lock-out.
    "RATELIMIT_LOGIN_FAILURES": "5/minute;30/hour",
    # Per room and username from every address, failed logins only: a brake on
    # guessing from many addresses, too large for one address to use up.
    "RATELIMIT_LOGIN_ACCOUNT": "25/minute;150/hour",
    # Per room and client IP, counting refused owner keys (and tokens) only.
    "RATELIMIT_OWNER_FAILURES": "5/minute;30/hour",
    # Per room and user, counting accepted messages: a burst of 10, then 1 a second.
    "RATELIMIT_MESSAGE_USER": "10/10second",
    "RATELIMIT_MESSAGE_IP": "30/10second",
    "RATELIMIT_TICKET": "60/minute",
    # Accounts a room may hold, and devices one account may stay logged in on
    # (a further login logs the oldest device out).
    "MAX_USERS_PER_ROOM": 1000,
    "MAX_TOKENS_PER_USER": 10,
    # Open event streams per client IP, in each worker process.
    "MAX_STREAMS_PER_IP": 20,
    # Open connections per client IP (streams included), in each gevent worker process.
    "MAX_CONNECTIONS_PER_IP": 64,
    # Seconds a request body may take to arrive in full; slower ones get 408 and a close.
    "REQUEST_BODY_TIMEOUT": 10.0,
    # No JSON body we accept comes near this; larger requests get 413.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Serve Prometheus metrics at /metrics (needs the `metrics` extra).
    "METRICS": False,
    # Addresses or networks that may read /metrics; others get 404.
    "METRICS_ALLOW": ["127.0.0.1/8", "::1/128"],
}
