"""Everything under `/<roomid>/`: the room page and the seed's JSON API.

Each view parses the request, calls one `RoomStore` method and shapes the reply;
the rules and the storage live in the store.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template, request
from werkzeug.routing import BaseConverter

from . import rules
from .web import failure_shape, html_page, json_fields, store


class RoomIdConverter(BaseConverter):
    """Only paths shaped like a room id reach these views, so `/createroom` and
    `/healthz` never look like rooms."""

    regex = rules.ROOMID_PATTERN


bp = Blueprint("rooms", __name__, url_prefix="/<roomid:roomid>")


@bp.before_request
def require_room() -> None:
    """An unknown room is reported (404) before anything else about the request."""
    store().alias((request.view_args or {})["roomid"])


@bp.get("/")
@html_page
def room_page(roomid: str) -> str:
    return render_template("room.html", roomid=roomid, alias=store().alias(roomid))


@bp.post("/register")
def register(roomid: str) -> Any:
    fields = json_fields("username", "password")
    username = store().register(roomid, fields["username"], fields["password"])
    return jsonify({"succeeded": True, "explanation": None, "username": username})


@bp.post("/login")
@failure_shape(token=None)
def login(roomid: str) -> Any:
    fields = json_fields("username", "password")
    token = store().login(roomid, fields["username"], fields["password"])
    return jsonify({"succeeded": True, "token": token})


@bp.post("/logout")
def logout(roomid: str) -> Any:
    fields = json_fields("username", "token")
    store().logout(roomid, fields["username"], fields["token"])
    return jsonify({"succeeded": True, "explanation": None})


@bp.post("/message")
def message(roomid: str) -> Any:
    fields = json_fields("username", "token", "message", optional=("client_id",))
    posted = store().post_message(
        roomid,
        fields["username"],
        fields["token"],
        fields["message"],
        client_id=fields.get("client_id"),
    )
    return jsonify({"succeeded": True, "explanation": None, "id": posted.id})


@bp.get("/get_conversation")
def get_conversation(roomid: str) -> Any:
    return jsonify(store().conversation(roomid))
