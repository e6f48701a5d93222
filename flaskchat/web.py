"""What every view shares: reading a JSON body, the one error handler that keeps
the seed's reply shape, and the security headers of DESIGN.md section 5."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, jsonify, render_template, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    MethodNotAllowed,
    SecurityError,
    UnsupportedMediaType,
)

from .errors import StoreError
from .store import RoomStore

F = TypeVar("F", bound=Callable[..., Any])

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

EXPLANATIONS = {
    400: "The request could not be understood.",
    404: "There is nothing at this address.",
    405: "This address does not accept that kind of request.",
    413: "The request is too large.",
    429: "You are going too fast. Please wait a moment and try again.",
    415: "Please send the data as JSON (Content-Type: application/json).",
    500: "Something went wrong on the server. Please try again.",
}
# Said for a Host outside TRUSTED_HOSTS; werkzeug's own text repeats the forged name.
UNTRUSTED_HOST = "This server does not answer to that host name."


def store() -> RoomStore:
    """The app's `RoomStore`, put in place by `create_app`."""
    return current_app.extensions["flaskchat"]  # type: ignore[no-any-return]


def failure_shape(**extras: Any) -> Callable[[F], F]:
    """Declare the keys a view's failure replies carry besides `succeeded` and
    `explanation`, as the seed gives them (`token: null` for login, ...)."""

    def mark(view: F) -> F:
        view.failure_extras = extras  # type: ignore[attr-defined]
        return view

    return mark


def html_page(view: F) -> F:
    """Mark a view whose errors are shown as an HTML page rather than JSON."""
    view.is_html_page = True  # type: ignore[attr-defined]
    return view


def json_object() -> dict[str, Any]:
    """The body as a JSON object; 415 when it is not JSON, 400 when malformed."""
    if not request.is_json:
        raise UnsupportedMediaType()
    try:
        body = json.loads(request.get_data().decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("The request body is not valid UTF-8.") from None
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def json_fields(*required: str, optional: tuple[str, ...] = ()) -> dict[str, str]:
    """Parse the body as a JSON object and return the named string fields.

    Optional fields that are absent or null are left out of the result; any
    other value that is not a string is a 400.
    """
    body = json_object()
    fields: dict[str, str] = {}
    for name in (*required, *optional):
        value = body.get(name)
        if value is None and name in optional:
            continue
        if value is None:
            raise BadRequest(f"The field {name!r} is missing.")
        elif not isinstance(value, str):
            raise BadRequest(f"The field {name!r} must be a string.")
        else:
            fields[name] = value
    return fields


# Any id of the right shape: lets a path with a malformed room id find its view.
_SOME_ROOMID = "A" * 22


def _view() -> Callable[..., Any] | None:
    """The view a failed request was meant for, so that its error keeps that
    view's reply shape: after a 405, the view at that path; after a routing 404
    under a malformed room id, the view at the same path in a well-formed room."""
    endpoint = request.endpoint
    error = request.routing_exception
    if endpoint is None and error is not None:
        adapter = current_app.url_map.bind_to_environ(request.environ)
        path, method = request.path, request.method
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            method = next(iter(error.valid_methods))
        elif path.count("/") >= 2:
            path = "/" + _SOME_ROOMID + "/" + path.split("/", 2)[2]
        try:
            endpoint, _ = adapter.match(path, method=method)
        except HTTPException:
            return None
    return current_app.view_functions.get(endpoint or "")


def failure(explanation: str, status: int) -> tuple[Response, int]:
    """A JSON failure in the seed's shape, with the view's extra keys."""
    extras = getattr(_view(), "failure_extras", {})
    return jsonify({"succeeded": False, "explanation": explanation, **extras}), status


def _wants_html() -> bool:
    view = _view()
    if view is not None:
        return getattr(view, "is_html_page", False)
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def handle_store_error(error: StoreError) -> Any:
    if _wants_html():
        return render_template("error.html", explanation=error.explanation), error.status
    return failure(error.explanation, error.status)


def handle_http_error(error: HTTPException) -> Any:
    status = error.code or 500
    if status >= 500:
        current_app.logger.error("Unhandled error on %s", request.path, exc_info=error)
    # A rate-limit error describes the limit ("10 per 1 minute"), not what to do.
    custom = error.description != type(error).description
    if isinstance(error, SecurityError):
        explanation = UNTRUSTED_HOST
    elif custom and not isinstance(error, RateLimitExceeded):
        explanation = error.description or ""
    else:
        explanation = EXPLANATIONS.get(status, error.name + ".")
    if _wants_html():
        response = current_app.make_response(
            (render_template("error.html", explanation=explanation), status)
        )
    else:
        response = current_app.make_response(failure(explanation, status))
    for name, value in error.get_headers():
        if name == "Retry-After":  # 429s and 503s say when to come back
            response.headers[name] = value
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def add_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def relative_root() -> dict[str, str]:
    """`static_root`: the way from this page back to the app's root, as a relative
    path, so pages work under any prefix without the app knowing its own URL."""
    return {"static_root": "../" * (request.path.count("/") - 1)}


def install(app: Flask) -> None:
    """Register the shared error handlers, template context and headers on `app`."""
    app.context_processor(relative_root)
    app.register_error_handler(StoreError, handle_store_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.after_request(add_security_headers)
