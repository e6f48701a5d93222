"""gunicorn's logger, with access-log fields that cannot forge a line and paths
that show no room id (named by `logger_class` in `gunicorn_config`).

gunicorn logs the decoded path as it is, so `%0d%0a` in a request would start a
line of the client's making. Here every field is escaped (non-printable
characters and backslashes; gunicorn itself escapes double quotes), and the
request path (`%(U)s`, and the target in `%(r)s`) shows a room id in its short
form, as the app's own log does (see `flaskchat.logs`). Headers and environ
fields are escaped but not rewritten.
"""

from __future__ import annotations

from typing import Any

from gunicorn import glogging  # type: ignore[import-untyped]

from .logs import environ_ids, escape, loggable_path


class Logger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own logger; only the access log's fields differ."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> Any:
        atoms: dict[str, Any] = {
            name: wsgi_text(value) if isinstance(value, str) else value
            for name, value in super().atoms(resp, req, environ, request_time).items()
        }
        ids = environ_ids(environ)
        path = loggable_path(atoms["U"] or "", ids.short if ids is not None else None)
        query = f"?{atoms['q']}" if atoms["q"] else ""
        script_name = wsgi_text(environ.get("SCRIPT_NAME", ""))
        atoms["U"] = path
        atoms["r"] = f"{atoms['m']} {script_name}{path}{query} {atoms['H']}"
        return {
            name: escape(value.replace("\\", "\\\\")) if isinstance(value, str) else value
            for name, value in atoms.items()
        }


def wsgi_text(value: str) -> str:
    """A WSGI string (bytes read as Latin-1) as the UTF-8 text the client meant, so
    a name in the path reads as typed and an encoded U+2028 is seen as one; bytes
    that are not UTF-8 become lone surrogates, which `escape` shows as `\\udcXX`."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # not a WSGI string
        return value
    return raw.decode("utf-8", "surrogateescape")
