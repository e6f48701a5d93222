"""The site-level pages: the home page, room creation and the health check."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template

from .web import failure_shape, html_page, json_fields, store

bp = Blueprint("lobby", __name__)


@bp.get("/")
@html_page
def home() -> str:
    return render_template("lobby.html")


@bp.post("/createroom")
@failure_shape(roomid=None)
def create_room() -> Any:
    fields = json_fields("alias")
    roomid = store().create_room(fields["alias"])
    return jsonify({"roomid": roomid})


@bp.get("/openapi.json")
def openapi() -> Any:
    """The published description of every JSON endpoint."""
    return current_app.send_static_file("openapi.json")


@bp.get("/healthz")
@failure_shape(status="unavailable")
def healthz() -> Any:
    store().ping()
    return jsonify({"status": "ok"})
