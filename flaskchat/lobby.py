"""The site-level pages: the home page, room creation and the health check."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template

from .errors import StoreUnavailable
from .web import failure_shape, html_page, json_fields, store

bp = Blueprint("lobby", __name__)


@bp.get("/")
@html_page
def home() -> str:
    return render_template("lobby.html")


@bp.post("/createroom")
@failure_shape(roomid=None, owner_key=None)
def create_room() -> Any:
    fields = json_fields("alias")
    room = store().new_room(fields["alias"])
    return jsonify({"roomid": room.roomid, "owner_key": room.owner_key})


@bp.get("/openapi.json")
def openapi() -> Any:
    """The published description of every JSON endpoint."""
    return current_app.send_static_file("openapi.json")


@bp.get("/healthz")
def healthz() -> Any:
    """For monitors: "ok", or 503 with "unavailable" when the store cannot write
    (each check commits a tiny write)."""
    try:
        store().ping()
    except StoreUnavailable as error:
        body = {"status": "unavailable", "succeeded": False, "explanation": error.explanation}
        return jsonify(body), 503
    return jsonify({"status": "ok"})
