"""flaskchat: link-based chat rooms. `create_app` serves them, `RoomStore` owns them."""

from .app import create_app
from .errors import (
    AuthenticationFailed,
    ClientIdReused,
    Forbidden,
    InvalidInput,
    LimitReached,
    NotFound,
    RoomNotFound,
    StoreError,
    StoreUnavailable,
    UsernameTaken,
)
from .store import Conversation, Message, RoomStore

__all__ = [
    "AuthenticationFailed",
    "ClientIdReused",
    "Conversation",
    "Forbidden",
    "InvalidInput",
    "LimitReached",
    "Message",
    "NotFound",
    "RoomNotFound",
    "RoomStore",
    "StoreError",
    "StoreUnavailable",
    "UsernameTaken",
    "create_app",
]
