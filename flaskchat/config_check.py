"""What each setting accepts, checked once when the app starts.

A bad value (an unknown time zone, `abc` for a number, `flase` for a boolean)
stops `flask run`, every `flask` command and gunicorn with one line that names
the setting and what it takes, instead of a traceback or a failure at the first
request that reads it. Values from the environment arrive parsed as JSON where
they parse (`from_prefixed_env`), so `FLASKCHAT_RATELIMIT_ENABLED=flase`
arrives as the string "flase".

Every key of `settings.DEFAULTS` has an entry in `CHECKS` (a test sees to it):
a new setting is declared here in one line when it is added there.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, MutableMapping
from typing import Any

import click
import limits
from gunicorn.errors import AppImportError  # type: ignore[import-untyped]
from limits.strategies import STRATEGIES
from werkzeug.security import generate_password_hash

from . import rules
from .metrics import allowed_networks

# A check returns the value to use, or raises ValueError whose message says what
# the setting takes ("a whole number of 1 or more").
Check = Callable[[Any], Any]


class SettingError(click.ClickException, AppImportError, ValueError, RuntimeError):  # type: ignore[misc]
    """A setting has a value it does not take. Each base is how one way of
    starting prints an error as one line, without a traceback: `flask` prints a
    ClickException, a gunicorn worker an AppImportError (and gunicorn then
    stops), gunicorn's master with `--preload` a RuntimeError. To Python
    callers it is a ValueError."""


def whole_number(minimum: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        raise ValueError(f"a whole number of {minimum} or more")

    return check


def optional_whole_number(minimum: int) -> Check:
    inner = whole_number(minimum)

    def check(value: Any) -> int | None:
        try:
            return None if value is None else inner(value)
        except ValueError:
            raise ValueError(f"a whole number of {minimum} or more, or null") from None

    return check


def seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9:
        return float(value)
    raise ValueError("a number of seconds above 0, such as 15 or 0.5")


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("true or false")


def timezone(value: Any) -> str:
    try:
        rules.parse_timezone(str(value))
    except ValueError:
        raise ValueError("an IANA time zone name such as UTC or Europe/Paris") from None
    return str(value)


def rate_limits(value: Any) -> str:
    """Flask-Limiter's syntax, parsed as it will be at the first request."""
    try:
        if not isinstance(value, str):
            raise ValueError
        limits.parse_many(value)
    except ValueError:
        raise ValueError("rate limits such as 30/minute or 10/minute;100/day") from None
    return value


def strategy(value: Any) -> str:
    if value in STRATEGIES:
        return str(value)
    raise ValueError("one of " + ", ".join(sorted(STRATEGIES)))


def password_hash_method(value: Any) -> str:
    """Whatever werkzeug's `generate_password_hash` takes: it is tried once."""
    if not isinstance(value, str) or not value:
        raise ValueError("a password hash method such as scrypt or pbkdf2:sha256:600000")
    problem = _hash_problem(value)
    if problem:
        raise ValueError(f"a password hash method such as scrypt ({problem})")
    return value


@functools.lru_cache(maxsize=8)
def _hash_problem(method: str) -> str | None:
    """Why werkzeug refuses `method`, or None. Cached: a hash costs about 0.1 s
    and every app built in a process would pay it again."""
    try:
        generate_password_hash("a setting check", method)
    except (ValueError, TypeError) as error:
        return str(error).rstrip(".")
    return None


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
STORE_SCHEMES = ("sqlite:///", *REDIS_SCHEMES, "memory://")


def store_url(value: Any) -> str:
    takes = "a store URL: sqlite:///name.sqlite3, sqlite:////absolute/path, redis://host:port/db"
    if not isinstance(value, str) or not value.startswith(STORE_SCHEMES):
        raise ValueError(f"{takes} or memory://")
    if value == "sqlite:///":
        raise ValueError(f"{takes} (a SQLite URL needs a file name)")
    if value.startswith(REDIS_SCHEMES) and not _has_redis():
        raise ValueError(
            "a store whose backend is installed: a redis:// store needs the redis extra,"
            " pip install 'flaskchat[redis]'"
        )
    return value


def _has_redis() -> bool:
    return importlib.util.find_spec("redis") is not None


def text(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError("a non-empty string")


def secret_key(value: Any) -> str | bytes | None:
    if value is None or (isinstance(value, str | bytes) and value):
        return value
    raise ValueError("a long random string, or null")


def host_names(value: Any) -> list[str] | None:
    """Flask's TRUSTED_HOSTS: a list of names, or one string of comma-separated
    names (as `FLASKCHAT_TRUSTED_HOSTS=chat.example.org` arrives)."""
    if isinstance(value, str):
        value = [name.strip() for name in value.split(",")]
    if value is None:
        return None
    if isinstance(value, list) and value and all(isinstance(h, str) and h for h in value):
        return value
    raise ValueError('a list of host names such as ["chat.example.org"], or null for any')


def networks(value: Any) -> Any:
    try:
        allowed_networks(value)
    except ValueError:
        raise ValueError('addresses or networks such as ["127.0.0.1/8", "::1/128"]') from None
    return value


CHECKS: dict[str, Check] = {
    "STORE_URL": store_url,
    "TIMEZONE": timezone,
    "CONVERSATION_LIMIT": whole_number(1),
    "MAX_MESSAGE_LENGTH": whole_number(1),
    "TRUSTED_PROXIES": whole_number(0),
    "TRUSTED_HOSTS": host_names,
    "PASSWORD_HASH_METHOD": password_hash_method,
    "REDIS_MIN_REPLICAS": whole_number(0),
    "REDIS_WAIT_MS": whole_number(1),
    "SSE_KEEPALIVE": seconds,
    "RATELIMIT_STRATEGY": strategy,
    "RATELIMIT_HEADERS_ENABLED": boolean,
    "RATELIMIT_SWALLOW_ERRORS": boolean,
    "RATELIMIT_CREATEROOM": rate_limits,
    "RATELIMIT_REGISTER": rate_limits,
    "RATELIMIT_LOGIN": rate_limits,
    "RATELIMIT_LOGIN_FAILURES": rate_limits,
    "RATELIMIT_LOGIN_ACCOUNT": rate_limits,
    "RATELIMIT_OWNER_FAILURES": rate_limits,
    "RATELIMIT_MESSAGE_USER": rate_limits,
    "RATELIMIT_MESSAGE_IP": rate_limits,
    "RATELIMIT_TICKET": rate_limits,
    "MAX_USERS_PER_ROOM": whole_number(1),
    "MAX_TOKENS_PER_USER": whole_number(1),
    "MAX_STREAMS_PER_IP": whole_number(0),
    "MAX_CONNECTIONS_PER_IP": whole_number(1),
    "REQUEST_BODY_TIMEOUT": seconds,
    "MAX_CONTENT_LENGTH": optional_whole_number(1),
    "METRICS": boolean,
    "METRICS_ALLOW": networks,
    # Not in DEFAULTS (Flask's and Flask-Limiter's own), but documented: checked when set.
    "RATELIMIT_ENABLED": boolean,
    "RATELIMIT_STORAGE_URI": text,
    "SECRET_KEY": secret_key,
}

# Settings whose value never appears in a message.
SECRET = frozenset({"SECRET_KEY"})
# Settings holding URLs, shown without a password.
URLS = frozenset({"STORE_URL", "RATELIMIT_STORAGE_URI"})


def check_settings(config: MutableMapping[str, Any]) -> None:
    """Check each setting of `CHECKS` present in `config`, replacing its value by
    the one to use; raise `SettingError` at the first that is not accepted."""
    for name, check in CHECKS.items():
        if name not in config:
            continue
        try:
            config[name] = check(config[name])
        except ValueError as takes:
            raise SettingError(
                f"Setting {name} (FLASKCHAT_{name}) is {shown(name, config[name])},"
                f" but it takes {takes}."
            ) from None
    if config.get("MAX_STREAMS_PER_IP", 0) > config.get("MAX_CONNECTIONS_PER_IP", 1 << 62):
        raise SettingError(
            "Setting MAX_STREAMS_PER_IP must not be above MAX_CONNECTIONS_PER_IP:"
            " each event stream is one of its client's connections."
        )


def shown(name: str, value: Any) -> str:
    """A value as a message may show it: short, one line, no secret."""
    if name in SECRET:
        return "not valid"
    if name in URLS and isinstance(value, str):
        value = public_url(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def public_url(url: str) -> str:
    """`url` without its password, for logs and messages."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


# A URL's password: `scheme://user:PASSWORD@host`, or `?password=PASSWORD`.
_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&]*")
