"""The app as production runs it, plus a no-op route: the floor that every other
figure is divided by, measured in the same round on the same server."""

from __future__ import annotations

from flask import Flask

from flaskchat import create_app


def create_bench_app() -> Flask:
    app = create_app()
    app.add_url_rule("/_noop", "noop", lambda: "ok")
    return app
