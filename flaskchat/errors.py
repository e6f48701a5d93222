"""The one exception family of the service layer.

Each error carries a sentence for the person at the keyboard and the HTTP status
that the web layer answers with, so views never translate errors one by one.
"""

from __future__ import annotations

from typing import ClassVar


class StoreError(Exception):
    """Base of everything `RoomStore` raises on purpose."""

    status: ClassVar[int] = 400

    def __init__(self, explanation: str) -> None:
        super().__init__(explanation)
        self.explanation = explanation


class InvalidInput(StoreError):
    """A value breaks a rule (length, characters, type)."""

    status = 400


class AuthenticationFailed(StoreError):
    """Wrong password, unknown user, or a token that is not (or no longer) valid."""

    status = 401


class RoomNotFound(StoreError):
    """No room has that id; knowing the id is what lets a client in."""

    status = 404

    def __init__(self, explanation: str = "There is no room at this address.") -> None:
        super().__init__(explanation)


class UsernameTaken(StoreError):
    """The name, compared without regard to case, is already registered in the room."""

    status = 409


class ClientIdReused(StoreError):
    """A `client_id` the user already sent with another text: a retry must repeat
    the same message, so this is a client's mistake rather than a new message."""

    status = 409

    def __init__(
        self,
        explanation: str = "This client_id was already used for a different message."
        " Send a new message with a new client_id.",
    ) -> None:
        super().__init__(explanation)


class Forbidden(StoreError):
    """Known, but not allowed: a banned name, a closed room, someone else's message."""

    status = 403


class NotFound(StoreError):
    """No such message or member in the room."""

    status = 404


class LimitReached(StoreError):
    """A per-room limit that keeps one user from crowding out the others."""

    status = 403


class StoreUnavailable(StoreError):
    """The storage backend cannot be reached; the request may be retried later."""

    status = 503

    def __init__(
        self, explanation: str = "The chat store is unavailable. Please try again shortly."
    ) -> None:
        super().__init__(explanation)
