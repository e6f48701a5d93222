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
USERNAME_MARKS_MAX = 4  # marks on one letter: Tibetan stacks three, "Zalgo" text dozens
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
MESSAGE_MAX = 2000
CLIENT_ID_MAX = 64
LINE_TIME_FORMAT = "%y-%m-%d %H:%M:%S"

ROOMID_PATTERN = r"[A-Za-z0-9_-]{22}"
_ROOMID = re.compile(ROOMID_PATTERN)
_USERNAME_PUNCTUATION = frozenset("_-.")
_MARKS = frozenset({"Mn", "Mc"})
# The letters and marks among Unicode's Default_Ignorable_Code_Point characters
# (DerivedCoreProperties.txt): they show nothing, so a name could hide them.
_INVISIBLE = frozenset(
    [
        *(0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0),
        *range(0x180B, 0x1810),
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
    ]
)

# Scripts, for Unicode TR39's "highly restrictive" level. The standard library has
# no Script property, but a letter's Unicode name starts with its script
# ("CYRILLIC SMALL LETTER A", "DEVANAGARI VOWEL SIGN I", "HANGUL SYLLABLE GA"); the
# first word (before any hyphen: "ARABIC-INDIC DIGIT ONE") stands for the script,
# except for these names. Scripts that share a first word ("OLD ITALIC", "OLD
# PERSIAN") count as one, which only ever lets a rare name through.
_COMMON = "COMMON"  # digits and punctuation that every script uses
_INHERITED = "INHERITED"  # marks that take the script of their letter
_SCRIPT_OF_WORD = {
    "DIGIT": _COMMON,  # 0-9; digits of other scripts carry their script's name
    "MODIFIER": _COMMON,  # MODIFIER LETTER APOSTROPHE and the like
    "COMBINING": _INHERITED,  # COMBINING ACUTE ACCENT and the like
    "CJK": "HAN",
    "IDEOGRAPHIC": "HAN",  # IDEOGRAPHIC ITERATION MARK
    "EXTENDED": "ARABIC",  # EXTENDED ARABIC-INDIC DIGIT ONE
}
# The mixes that TR39 allows because languages are written that way: Japanese,
# Chinese with Bopomofo, Korean (each with Latin letters).
_WRITING_SYSTEMS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# Look-alikes folded by `username_skeleton`, after case folding: letters of other
# scripts or of Latin, and digits, that are drawn like a Latin letter. Where the
# two cases of a letter look like different Latin letters (Greek Η and η), the
# capital wins: names compare without regard to case. A short list of the usual
# tricks, not TR39's whole confusables table.
_LOOKALIKES = str.maketrans(
    {
        "ı": "i",  # Latin dotless i
        "ȷ": "j",  # Latin dotless j
        "ɑ": "a",  # Latin alpha
        "ɡ": "g",  # Latin script g
        "0": "o",
        "1": "l",
        # Cyrillic
        "а": "a",
        "в": "b",
        "е": "e",
        "і": "i",
        "ј": "j",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "с": "c",
        "т": "t",
        "у": "y",
        "х": "x",
        "ѕ": "s",
        "ԁ": "d",
        "һ": "h",
        "ԛ": "q",
        "ԝ": "w",
        "ү": "y",
        # Greek
        "α": "a",
        "β": "b",
        "ε": "e",
        "ζ": "z",
        "η": "h",
        "ι": "i",
        "κ": "k",
        "μ": "m",
        "ν": "n",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "y",
        "χ": "x",
        "ϲ": "c",
        "ϳ": "j",
    }
)


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


def key_matches(key: str, digest: str) -> bool:
    """Whether `key` (an owner key) has the stored SHA-256 `digest`, in constant
    time; nothing matches an empty digest (a room made before rooms had owners)."""
    return bool(digest) and hmac.compare_digest(token_digest(key), digest)


RETENTION_MAX_DAYS = 3650


def check_retention_days(days: object) -> int | None:
    """How many days a room keeps its messages: 1 to 3650, or None for ever."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidInput("retention_days must be a whole number of days, or null.")
    if not 1 <= days <= RETENTION_MAX_DAYS:
        raise InvalidInput(f"retention_days must be from 1 to {RETENTION_MAX_DAYS}, or null.")
    return days


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
    """NFKC-normalise and strip; the result is what the room shows.

    These are the rules a name must meet to log in; `clean_new_username` adds the
    ones for new names, so accounts made under older rules keep working.
    """
    _require_utf8(username, "username")
    username = unicodedata.normalize("NFKC", username).strip()
    if not username:
        raise InvalidInput("Please choose a username.")
    if len(username) > USERNAME_MAX:
        raise InvalidInput(f"A username can be at most {USERNAME_MAX} characters long.")
    marks: int | None = None  # marks on the letter before; None: no letter before
    for char in username:
        if unicodedata.category(char) in _MARKS and ord(char) not in _INVISIBLE:
            if marks is None:
                raise InvalidInput("An accent or vowel sign in a username must follow a letter.")
            if marks == USERNAME_MARKS_MAX:
                raise InvalidInput(
                    f"A letter in a username can carry at most {USERNAME_MARKS_MAX} accents"
                    " or vowel signs."
                )
            marks += 1
        elif char.isalnum() or char in _USERNAME_PUNCTUATION:
            marks = 0 if char.isalpha() else None
        else:
            raise InvalidInput("A username may contain only letters, digits, '_', '-' and '.'.")
    return username


def clean_new_username(username: str) -> str:
    """`clean_username`, and what a name must also meet to be registered: nothing
    invisible, and one script (TR39 "highly restrictive"), so that `admin` spelt
    with a Cyrillic `a` (U+0430) cannot pass for `admin`."""
    username = clean_username(username)
    if any(ord(char) in _INVISIBLE for char in username):
        raise InvalidInput("A username cannot contain invisible characters.")
    scripts = _scripts(username)
    if len(scripts) > 1 and not any(scripts <= known for known in _WRITING_SYSTEMS):
        names = " and ".join(script.title() for script in sorted(scripts))
        raise InvalidInput(
            f"A username cannot mix letters of different scripts ({names}): "
            "such names can pass for someone else's."
        )
    return username


def _script(char: str) -> str:
    if char in _USERNAME_PUNCTUATION or unicodedata.category(char) in {"Nl", "No"}:
        return _COMMON  # Roman numerals, circled numbers: not what a script reads
    word = unicodedata.name(char, "").split(" ")[0].split("-")[0]
    return _SCRIPT_OF_WORD.get(word, word)


def _scripts(username: str) -> set[str]:
    """The scripts of a name's letters, digits and marks."""
    return {_script(char) for char in username} - {_COMMON, _INHERITED}


def _without_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if unicodedata.category(c) not in {"Mn", "Me"})


def username_skeleton(username: str) -> str:
    """What a name looks like, in the form of a `username_key`: accents dropped,
    case folded, look-alikes replaced (`admin` with a dotless i, U+0131, gives
    `admin`; `ace` spelt in Cyrillic gives `ace`). A new name whose skeleton is a
    member's key looks like them."""
    folded = _without_marks(_without_marks(username).casefold())
    return unicodedata.normalize("NFKC", folded.translate(_LOOKALIKES))


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
