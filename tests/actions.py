"""Helpers that describe actions: what a seed client does, one line each."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

PASSWORD = "correct horse battery"


class ChatActions:
    """What a seed client does, over the test client, in one line each."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def create_room(self, alias: str = "Bob and Al's room") -> str:
        response = self.client.post("/createroom", json={"alias": alias})
        assert response.status_code == 200, response.json
        return str(response.json["roomid"])

    def register(self, roomid: str, username: str, password: str = PASSWORD) -> Any:
        return self.client.post(
            f"/{roomid}/register", json={"username": username, "password": password}
        )

    def login(self, roomid: str, username: str, password: str = PASSWORD) -> str:
        response = self.client.post(
            f"/{roomid}/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.json
        return str(response.json["token"])

    def join(self, roomid: str, username: str) -> str:
        """Register and log in; return the token."""
        assert self.register(roomid, username).status_code == 200
        return self.login(roomid, username)

    def say(self, roomid: str, username: str, token: str, message: str, **extra: Any) -> Any:
        return self.client.post(
            f"/{roomid}/message",
            json={"username": username, "token": token, "message": message, **extra},
        )
