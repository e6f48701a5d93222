"""Everything under `/<roomid>/`: the room page and the seed's JSON API.

Each view parses the request, calls one `RoomStore` method and shapes the reply;
the rules and the storage live in the store.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
from .backends.base import UNSET
from .cache import BoundedCache
from .errors import AuthenticationFailed
from .fanout import Fanout, can_hand_over
from .limits import StreamCounter, client_ip
from .live import hung_up
from .logs import room_log_id
from .store import (
    Conversation,
    Message,
    OwnerSettings,
    Presence,
    PresenceChange,
    RoomEvent,
    StreamItem,
    StreamStart,
)
from .web import failure_shape, html_page, json_fields, json_object, store

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


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
    start = store().start_stream(roomid, after=after, ticket=request.args.get("ticket"))
    streams: StreamCounter = current_app.extensions["flaskchat_streams"]
    release = streams.claim(client_ip(), int(current_app.config["MAX_STREAMS_PER_IP"]))
    keepalive = float(current_app.config["SSE_KEEPALIVE"])
    response: Response
    if can_hand_over(request.environ):  # gunicorn's gevent worker: to the room's feed
        response = HandedOverStream(current_app.extensions["flaskchat_fanout"], start, keepalive)
    else:
        items = store().stream_items(start, keepalive, client_gone())
        response = Response(sse_lines(items), mimetype="text/event-stream")
    response.call_on_close(release)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # tell nginx not to hold events back
    return response


class HandedOverStream(Response):
    """An event stream whose connection goes to its room's feed once the app has
    made its headers (see `flaskchat.fanout`); the close callbacks run when the
    stream ends."""

    def __init__(self, fanout: Fanout, start: StreamStart, keepalive: float) -> None:
        super().__init__(iter(()), mimetype="text/event-stream")
        self.fanout, self.start, self.keepalive = fanout, start, keepalive

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        headers = self.get_wsgi_headers(environ).to_wsgi_list()
        return self.fanout.hand_over(
            self.start, environ, self.status, headers, self.keepalive, self.close
        )


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
    yield from map(sse_record, items)


def sse_record(item: StreamItem) -> str:
    """One stream item as an SSE record: the whole presence list (the first
    record of a stream), a change to it, a message, a moderation event, or a
    keep-alive comment."""
    if item is None:
        return ": keep-alive\n\n"
    if isinstance(item, Presence):
        return f"event: presence\ndata: {json.dumps({'online': item.online})}\n\n"
    if isinstance(item, PresenceChange):
        data = json.dumps({"joined": item.joined, "left": item.left})
        return f"event: presence-change\ndata: {data}\n\n"
    if isinstance(item, RoomEvent):
        return room_event(item)
    return message_event(item)


def room_event(event: RoomEvent) -> str:
    """A moderation event as SSE: `delete` names the message removed, `ban` and
    `unban` the member, and `gone` (the room was deleted) ends the stream."""
    if event.kind == "gone":
        return "event: gone\ndata: {}\n\n"
    field = "id" if event.kind == "delete" else "username"
    data = json.dumps({field: event.subject}, ensure_ascii=False)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


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


# Owners (DESIGN 1.3): each view checks nothing itself; the store knows the key.


@bp.post("/delete_message")
def delete_message(roomid: str) -> Any:
    """The author (`username` and `token`) or the owner (`owner_key`) removes a message."""
    fields = json_fields("id", optional=("username", "token", "owner_key"))
    if "owner_key" not in fields and not {"username", "token"} <= fields.keys():
        raise BadRequest("Send your username and token, or the room's owner key.")
    store().delete_message(
        roomid,
        fields["id"],
        username=fields.get("username"),
        token=fields.get("token"),
        owner_key=fields.get("owner_key"),
    )
    return jsonify({"succeeded": True, "explanation": None})


@bp.post("/ban")
def ban(roomid: str) -> Any:
    fields = json_fields("owner_key", "username")
    store().ban(roomid, fields["owner_key"], fields["username"])
    return jsonify({"succeeded": True, "explanation": None})


@bp.post("/unban")
def unban(roomid: str) -> Any:
    fields = json_fields("owner_key", "username")
    store().unban(roomid, fields["owner_key"], fields["username"])
    return jsonify({"succeeded": True, "explanation": None})


@bp.get("/settings")
def settings(roomid: str) -> Any:
    """Public, but for the ban list, which comes with `Authorization: Bearer KEY`."""
    owner_key = None
    if request.authorization is not None and request.authorization.type == "bearer":
        owner_key = request.authorization.token or ""
    return jsonify(settings_json(store().settings(roomid, owner_key)))


@bp.post("/settings")
@failure_shape(settings=None)
def update_settings(roomid: str) -> Any:
    fields = json_fields("owner_key", optional=("registration",))
    changed = store().update_settings(
        roomid,
        fields["owner_key"],
        registration=fields.get("registration"),
        retention_days=json_object().get("retention_days", UNSET),
    )
    return jsonify({"succeeded": True, "settings": settings_json(changed)})


def settings_json(settings: OwnerSettings) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "registration": "open" if settings.registration_open else "closed",
        "retention_days": settings.retention_days,
    }
    if settings.banned is not None:
        shown["banned"] = settings.banned
    return shown


@bp.post("/export")
def export(roomid: str) -> Response:
    """The whole history, streamed as it is read: JSON, or the seed's lines."""
    fields = json_fields("owner_key", optional=("format",))
    kind = fields.get("format", "json")
    if kind not in ("json", "text"):
        raise BadRequest('The format must be "json" or "text".')
    alias = store().alias(roomid)
    messages = store().export(roomid, fields["owner_key"])
    if kind == "text":
        body: Iterator[str] = (message.line + "\n" for message in messages)
        response = Response(body, mimetype="text/plain")
    else:
        response = Response(export_json(roomid, alias, messages), mimetype="application/json")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="room.{"txt" if kind == "text" else "json"}"'
    )
    return response


def export_json(roomid: str, alias: str, messages: Iterator[Message]) -> Iterator[str]:
    yield json.dumps({"roomid": roomid, "alias": alias})[:-1] + ', "messages": ['
    for n, message in enumerate(messages):
        yield ("," if n else "") + json.dumps(message_json(message))
    yield "]}\n"


@bp.post("/owner_key")
@failure_shape(owner_key=None)
def rotate_owner_key(roomid: str) -> Any:
    fields = json_fields("owner_key")
    new_key = store().rotate_owner_key(roomid, fields["owner_key"])
    return jsonify({"succeeded": True, "owner_key": new_key})


@bp.post("/delete_room")
def delete_room(roomid: str) -> Any:
    fields = json_fields("owner_key")
    store().delete_room(roomid, fields["owner_key"])
    return jsonify({"succeeded": True, "explanation": None})
