"""The rules of DESIGN.md section 2, in exactly one place.

Pure functions: each takes what a client sent and returns the value to store, or
raises `InvalidInput` with a sentence meant for the person who typed it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidInput

ALIAS_MAX = 80
USERNAME_MAX = 32
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
MESSAGE_MAX = 2000
CLIENT_ID_MAX = 64
LINE_TIME_FORMAT = "%y-%m-%d %H:%M:%S"

ROOMID_PATTERN = r"[A-Za-z0-9_-]{22}"
_ROOMID = re.compile(ROOMID_PATTERN)
_USERNAME_PUNCTUATION = frozenset("_-.")


def new_roomid() -> str:
    """128 random bits, URL-safe: the link is the only key to a room."""
    return secrets.token_urlsafe(16)


def looks_like_roomid(value: str) -> bool:
    """Cheap shape check so that odd paths never reach the storage backend."""
    return _ROOMID.fullmatch(value) is not None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Tokens are stored only as their SHA-256: a leaked database logs nobody in."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def digest_matches(candidate: str, stored: Iterable[str]) -> bool:
    """Constant-time membership test, so response time says nothing about a token."""
    found = False
    for digest in stored:
        found |= hmac.compare_digest(candidate, digest)
    return found


def is_text(value: str) -> bool:
    """False for strings that hold lone surrogates (JSON can carry them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_utf8(value: str, what: str) -> None:
    if not is_text(value):
        raise InvalidInput(f"The {what} contains characters that are not valid text.")


def _is_control(char: str, allowed: str = "") -> bool:
    return char not in allowed and unicodedata.category(char) in {"Cc", "Cs"}


def clean_alias(alias: str) -> str:
    _require_utf8(alias, "room name")
    alias = alias.strip()
    if not alias:
        raise InvalidInput("Please give the room a name.")
    if len(alias) > ALIAS_MAX:
        raise InvalidInput(f"A room name can be at most {ALIAS_MAX} characters long.")
    if any(_is_control(c) for c in alias):
        raise InvalidInput("A room name cannot contain control characters.")
    return alias


def clean_username(username: str) -> str:
    """NFKC-normalise and strip; the result is what the room shows."""
    _require_utf8(username, "username")
    username = unicodedata.normalize("NFKC", username).strip()
    if not username:
        raise InvalidInput("Please choose a username.")
    if len(username) > USERNAME_MAX:
        raise InvalidInput(f"A username can be at most {USERNAME_MAX} characters long.")
    if not all(c.isalnum() or c in _USERNAME_PUNCTUATION for c in username):
        raise InvalidInput("A username may contain only letters, digits, '_', '-' and '.'.")
    return username


def username_key(username: str) -> str:
    """What makes two names the same in one room: `Tom` blocks `tom`."""
    return clean_username(username).casefold()


def check_password(password: str) -> str:
    _require_utf8(password, "password")
    if len(password) < PASSWORD_MIN:
        raise InvalidInput(f"A password must be at least {PASSWORD_MIN} characters long.")
    if len(password) > PASSWORD_MAX:
        raise InvalidInput(f"A password can be at most {PASSWORD_MAX} characters long.")
    return password


def clean_message(text: str, max_length: int = MESSAGE_MAX) -> str:
    """Strip, bound, refuse control characters; never HTML-escape (the renderer does)."""
    _require_utf8(text, "message")
    text = text.strip()
    if not text:
        raise InvalidInput("A message cannot be empty.")
    if len(text) > max_length:
        raise InvalidInput(f"A message can be at most {max_length} characters long.")
    if any(_is_control(c, allowed="\n\t") for c in text):
        raise InvalidInput("A message cannot contain control characters.")
    return text


def clean_client_id(client_id: str | None) -> str | None:
    if client_id is None:
        return None
    _require_utf8(client_id, "client_id")
    if not client_id or len(client_id) > CLIENT_ID_MAX:
        raise InvalidInput(f"A client_id must be 1 to {CLIENT_ID_MAX} characters long.")
    if any(_is_control(c) for c in client_id):
        raise InvalidInput("A client_id cannot contain control characters.")
    return client_id


def parse_timezone(name: str) -> tzinfo:
    """An IANA zone name; `UTC` works even where the system has no zone database."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"Unknown time zone {name!r}.") from None


def format_line(posted_at: datetime, username: str, text: str, tz: tzinfo) -> str:
    """The seed's line: `14-07-12 13:22:30 <alice> hi`."""
    return f"{posted_at.astimezone(tz).strftime(LINE_TIME_FORMAT)} <{username}> {text}"
