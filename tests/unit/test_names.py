"""Usernames beyond ASCII: letters with the combining marks their script needs, no
mixing of scripts in a new name, and no new name that looks like one already in
the room; names registered under the older rules keep logging in."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.security import generate_password_hash

from flaskchat import InvalidInput, RoomStore, UsernameTaken, rules
from flaskchat.backends.base import AddedUser, UserRecord

PASSWORD = "correct horse battery"
CHEAP_HASH = "scrypt:1024:8:1"

# Names a room must take, shown as typed (after NFKC).
NEW_NAMES = [
    "admin",
    "user_42",
    "a.b-c",
    "Zoë",
    "x\u0301\u0302\u0303\u0304",  # as many marks as one letter may carry
    "Jose\u0301",  # typed decomposed: shown composed, as NFKC gives it
    "straße",
    "ǅemal",
    "हिन्दी",  # Devanagari: vowel signs and a virama after letters
    "วิชัย",  # Thai: vowel marks above letters
    "محمّد",  # Arabic: a shadda on a letter
    "שָׁלוֹם",  # Hebrew: points under and over letters
    "བསྒྲུབས",  # Tibetan: three marks stacked on one letter
    "ΣΊΣΥΦΟΣ",
    "Иван",
    "١٢٣",  # digits of one script, on their own
    "山田たろう",  # Han and Hiragana
    "スズキー",  # Katakana with the prolonged sound mark
    "Tarō_山田",  # Latin with Han, as Japanese names are written
    "Kim_김민준",  # Latin, Han and Hangul
    "王ㄅㄆ",  # Han and Bopomofo
]

# New names refused as InvalidInput, with a word of the explanation.
REFUSED_NAMES = [
    ("аdmin", "script"),  # Cyrillic а among Latin letters
    ("pаypаl", "script"),
    ("Zoë_π", "script"),
    ("Кира_Ann", "script"),
    ("ab\u093f", "script"),  # a Devanagari vowel sign on a Latin letter
    ("x١", "script"),  # a Latin letter with an Arabic-Indic digit
    ("김たろう", "script"),  # Hangul and Hiragana are never written together
    ("ㄅたろう", "script"),
    ("\u0301abc", "letter"),  # a mark on nothing
    ("1\u0301", "letter"),  # a mark on a digit
    ("a_\u0301", "letter"),
    ("x\u0301\u0302\u0303\u0304\u0305", "at most"),  # a stack of marks
    ("a\ufe0f", "only"),  # an invisible variation selector
    ("a\u034f", "only"),  # an invisible grapheme joiner
    ("\u3164", "invisible"),  # a Hangul filler: a letter that shows nothing
    ("admin\u3164", "invisible"),
]

# What each name looks like, for the look-alike check: compared with the keys
# (case-folded names) of the accounts already in a room.
SKELETONS = [
    ("admin", "admin"),
    ("Admin", "admin"),
    ("admın", "admin"),  # Latin dotless i
    ("аdmin", "admin"),  # Cyrillic а
    ("Люба", "любa"),  # Cyrillic letters with no Latin twin stay as they are
    ("асе", "ace"),  # all Cyrillic, all like Latin
    ("ΤΟΜ", "tom"),  # all Greek capitals
    ("José", "jose"),  # accents dropped
    ("b0b", "bob"),
    ("paypa1", "paypal"),
    ("ｓｃｒｉｐｔ", "script"),  # fullwidth forms
    ("straße", "strasse"),
    ("ǅemal", "dzemal"),
    ("ΣΊΣΥΦΟΣ", "σiσyφoσ"),
    ("김민준", "김민준"),  # Hangul decomposes and recomposes
]


# Characters of names the older rule took, and forms that NFKC turns into them.
OLD_NAME_CHARACTERS = st.one_of(
    st.characters(categories=("L", "N")), st.sampled_from("_-.ﬁ²①ＡＺ\u3164")
)


def old_rule(name: str) -> bool:
    """What a username had to be before marks were allowed: NFKC, stripped, 1-32
    letters, digits, '_', '-' or '.'."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    name = unicodedata.normalize("NFKC", name).strip()
    return 1 <= len(name) <= 32 and all(c.isalnum() or c in "_-." for c in name)


@pytest.fixture
def cheap_store(room_store: RoomStore) -> RoomStore:
    room_store.hash_method = CHEAP_HASH
    return room_store


@pytest.mark.parametrize("name", NEW_NAMES)
def test_names_of_one_script_with_their_marks_register_and_log_in(
    cheap_store: RoomStore, name: str
) -> None:
    roomid = cheap_store.create_room("names")
    shown = cheap_store.register(roomid, name, PASSWORD)
    assert shown == unicodedata.normalize("NFKC", name)
    token = cheap_store.login(roomid, name, PASSWORD)
    posted = cheap_store.post_message(roomid, shown, token, "hello")
    assert posted.username == shown
    assert cheap_store.conversation(roomid)[-1].endswith(f"<{shown}> hello")


@pytest.mark.parametrize(("name", "fragment"), REFUSED_NAMES)
def test_mixed_scripts_stray_marks_and_invisible_letters_are_refused(
    cheap_store: RoomStore, name: str, fragment: str
) -> None:
    roomid = cheap_store.create_room("names")
    with pytest.raises(InvalidInput, match=fragment):
        cheap_store.register(roomid, name, PASSWORD)
    assert cheap_store.backend.count_users(roomid) == 0


@pytest.mark.parametrize(("name", "skeleton"), SKELETONS)
def test_the_skeleton_folds_look_alikes(name: str, skeleton: str) -> None:
    assert rules.username_skeleton(name) == skeleton


@pytest.mark.parametrize(
    ("existing", "lookalike"),
    [
        ("admin", "admın"),  # Latin dotless i
        ("admin", "ADMİN"),  # Latin capital I with a dot
        ("ace", "асе"),  # all Cyrillic
        ("TOM", "ΤΟΜ"),  # all Greek
        ("jose", "José"),
        ("bob", "B0B"),
        ("hindi", "hindi\u0301"),
    ],
)
def test_a_look_alike_of_a_name_in_the_room_is_refused(
    cheap_store: RoomStore, existing: str, lookalike: str
) -> None:
    roomid = cheap_store.create_room("look-alikes")
    cheap_store.register(roomid, existing, PASSWORD)
    with pytest.raises(UsernameTaken, match=f"looks too much like {re.escape(existing)}"):
        cheap_store.register(roomid, lookalike, PASSWORD)
    assert cheap_store.backend.count_users(roomid) == 1
    other = cheap_store.create_room("elsewhere")
    assert cheap_store.register(other, lookalike, PASSWORD)  # only within one room


def test_a_taken_name_still_says_it_is_taken(cheap_store: RoomStore) -> None:
    roomid = cheap_store.create_room("taken")
    cheap_store.register(roomid, "Tom", PASSWORD)
    with pytest.raises(UsernameTaken, match="The name TOM is already taken"):
        cheap_store.register(roomid, "TOM", PASSWORD)


@pytest.mark.parametrize("name", ["аdmin", "Zoë_π", "x١", "\u3164", "admın"])
def test_accounts_made_under_the_older_rules_still_log_in(
    cheap_store: RoomStore, name: str
) -> None:
    """Only registration applies the new rules: nobody already in a room is locked out."""
    roomid = cheap_store.create_room("old accounts")
    cheap_store.register(roomid, "admin", PASSWORD)
    shown = rules.clean_username(name)
    record = UserRecord(shown, generate_password_hash(PASSWORD, method=CHEAP_HASH))
    added = cheap_store.backend.add_user(roomid, rules.username_key(name), record, 10)
    assert added is AddedUser.ADDED
    token = cheap_store.login(roomid, name, PASSWORD)
    assert cheap_store.post_message(roomid, name, token, "still here").username == shown
    cheap_store.logout(roomid, name, token)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(name=st.one_of(st.text(max_size=40), st.text(OLD_NAME_CHARACTERS, min_size=1, max_size=33)))
def test_every_name_the_older_rule_took_is_still_a_login_name(name: str) -> None:
    if not old_rule(name):
        return
    cleaned = unicodedata.normalize("NFKC", name).strip()
    assert rules.clean_username(name) == cleaned
    assert rules.username_key(name) == cleaned.casefold()


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(name=st.text(st.characters(categories=("L", "N", "M")), min_size=1, max_size=32))
def test_the_skeleton_is_a_fixed_point(name: str) -> None:
    """Folding twice changes nothing: a skeleton is already as plain as it gets."""
    skeleton = rules.username_skeleton(name)
    assert rules.username_skeleton(skeleton) == skeleton
