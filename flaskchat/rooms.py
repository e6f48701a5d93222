"""Everything under `/<roomid>/`: the room page and the seed's JSON API.

Each view parses the request, calls one `RoomStore` method and shapes the reply;
the rules and the storage live in the store.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
)
from werkzeug.exceptions import BadRequest
from werkzeug.routing import BaseConverter

from . import rules
from .cache import BoundedCache
from .errors import AuthenticationFailed
from .limits import StreamCounter, client_ip
from .live import hung_up
from .logs import room_log_id
from .store import Conversation, Message, Presence, StreamItem
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


@bp.get("")
@html_page
def room_page_without_slash(roomid: str) -> Response:
    """Werkzeug's own slash redirect names the Host header's host; a relative
    `Location` names none, and works under any prefix."""
    return Response(status=308, headers={"Location": f"{roomid}/"})


@bp.post("/register")
def register(roomid: str) -> Any:
    fields = json_fields("username", "password")
    username = store().register(roomid, fields["username"], fields["password"])
    return jsonify({"succeeded": True, "explanation": None, "username": username})


@bp.post("/login")
@failure_shape(token=None)
def login(roomid: str) -> Any:
    fields = json_fields("username", "password")
    try:
        token = store().login(roomid, fields["username"], fields["password"])
    except AuthenticationFailed:
        log_failed_login(roomid, fields["username"])
        raise
    return jsonify({"succeeded": True, "token": token})


def log_failed_login(roomid: str, username: str) -> None:
    """One stable line per failed login, for fail2ban (README, Security). The name
    is JSON-quoted and cut, so no input can forge or break a line; the room shows
    only as its short log id and the password never appears."""
    current_app.logger.warning(
        "failed login: room=%s user=%s ip=%s",
        room_log_id(current_app, roomid),
        json.dumps(username[:64]),
        client_ip(),
    )


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
def get_conversation(roomid: str) -> Response:
    """The seed's list of lines; polling clients that send `If-None-Match` get a
    bodiless 304 while nothing changed. Every poll lands here, so the reply is
    put together from parts made once per snapshot (profile: parsing an absent
    header and building the response from parts were a third of this view)."""
    body, tag = encoded_conversation(roomid, store().conversation_snapshot(roomid))
    etag = f'"{tag}"'
    # Read straight from the environ: `headers.get` raises and catches a KeyError
    # on every poll that sends none. A poller sends back the ETag as it came.
    asked = request.environ.get("HTTP_IF_NONE_MATCH")
    if asked is not None and (asked == etag or request.if_none_match.contains_weak(tag)):
        return Response(status=304, headers={"ETag": etag})
    return Response(body, headers={"ETag": etag}, content_type="application/json")


# Encoded replies, shared by every app of the process (README, Security: what a
# worker's caches hold at most). A conversation is kept per room, only in its
# latest form; an event per message.
ENCODED_BYTES = 16 * 1024 * 1024
EVENT_BYTES = 8 * 1024 * 1024
_encoded = BoundedCache[str, tuple[Conversation, bytes, str]](
    ENCODED_BYTES, lambda entry: len(entry[1])
)
_events = BoundedCache[Message, str](EVENT_BYTES, sys.getsizeof)


def encoded_conversation(roomid: str, snapshot: Conversation) -> tuple[bytes, str]:
    """The reply body and its entity tag, built once per snapshot however often
    polled. The body is what `jsonify` sends in production (compact,
    ASCII-escaped); it depends on nothing but the snapshot, as a cache shared by
    every app must."""
    cached = _encoded.get(roomid)
    if cached is not None and cached[0] == snapshot:
        return cached[1], cached[2]
    body = (json.dumps(list(snapshot.lines), separators=(",", ":")) + "\n").encode()
    tag = hashlib.blake2b(body, digest_size=16).hexdigest()
    _encoded.put(roomid, (snapshot, body, tag))
    return body, tag


@bp.get("/messages")
def messages(roomid: str) -> Any:
    limit = request.args.get("limit", "50")
    if not (limit.isascii() and limit.isdigit() and len(limit) <= 6):
        raise BadRequest("The limit must be a whole number.")
    page = store().messages(
        roomid,
        before=request.args.get("before"),
        after=request.args.get("after"),
        limit=int(limit),
    )
    return jsonify({"messages": [message_json(m) for m in page.messages], "more": page.more})


@bp.post("/ticket")
@failure_shape(ticket=None)
def ticket(roomid: str) -> Any:
    fields = json_fields("username", "token")
    issued = store().issue_ticket(roomid, fields["username"], fields["token"])
    return jsonify({"succeeded": True, "ticket": issued})


@bp.get("/events")
def events(roomid: str) -> Response:
    """Server-Sent Events: missed messages from `Last-Event-ID` (or `?after=`) on,
    then live ones, with presence changes and keep-alive comments between."""
    after = request.headers.get("Last-Event-ID") or request.args.get("after")
    items = store().follow(
        roomid,
        after=after,
        ticket=request.args.get("ticket"),
        keepalive=current_app.config["SSE_KEEPALIVE"],
        closed=client_gone(),
    )
    streams: StreamCounter = current_app.extensions["flaskchat_streams"]
    release = streams.claim(client_ip(), int(current_app.config["MAX_STREAMS_PER_IP"]))
    response = Response(sse_lines(items), mimetype="text/event-stream")
    response.call_on_close(release)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # tell nginx not to hold events back
    return response


def client_gone() -> Callable[[], bool] | None:
    """A check of whether the client hung up, where the server shows its socket
    (gunicorn and werkzeug's server both do), so a closed page frees its stream
    within seconds instead of at the next keep-alive."""
    connection = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    return None if connection is None else hung_up(connection)


def sse_lines(items: Iterator[StreamItem]) -> Iterator[str]:
    """Encode stream items as SSE records. The retry hint comes first, with the
    opening presence, so a client sees bytes at once."""
    yield "retry: 2000\n"
    for item in items:
        if item is None:
            yield ": keep-alive\n\n"
        elif isinstance(item, Presence):
            yield f"event: presence\ndata: {json.dumps({'online': item.online})}\n\n"
        else:
            yield message_event(item)


def message_event(message: Message) -> str:
    """One SSE record per message, encoded once however many streams send it."""
    event = _events.get(message)
    if event is None:
        data = json.dumps(message_json(message), ensure_ascii=False)
        event = f"id: {message.id}\nevent: message\ndata: {data}\n\n"
        _events.put(message, event)
    return event


def message_json(message: Message) -> dict[str, str]:
    return {
        "id": message.id,
        "time": message.posted_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "username": message.username,
        "text": message.text,
        "line": message.line,
    }
