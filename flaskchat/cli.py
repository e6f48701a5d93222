"""`flask --app flaskchat store ...`: maintenance commands for the store."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from . import rules
from .backends import open_backend
from .logs import room_log_id
from .transfer import DestinationNotEmpty, copy_rooms

store_cli = AppGroup("store", help="Work with flaskchat stores.")
room_cli = AppGroup("room", help="Work with rooms.")


@store_cli.command("copy")
@click.argument("source")
@click.argument("destination")
@click.option(
    "--replace",
    is_flag=True,
    help="Copy into a destination that already has rooms, replacing rooms with the same id.",
)
def copy_command(source: str, destination: str, replace: bool) -> None:
    """Copy every room, account and message from SOURCE to DESTINATION (store URLs
    such as sqlite:///flaskchat.sqlite3 or redis://127.0.0.1:6379/0)."""
    instance = current_app.instance_path
    try:
        src, dst = open_backend(source, instance), open_backend(destination, instance)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        report = copy_rooms(src, dst, replace=replace)
    except DestinationNotEmpty as error:
        raise click.ClickException(f"{error} Pass --replace to copy anyway.") from None
    finally:
        src.close()
        dst.close()
    click.echo(
        f"Copied {report.rooms} rooms, {report.users} accounts and {report.messages} messages."
    )


# A room id may begin with "-": it is an argument, never an option.
ROOMID_ARGUMENT = {"ignore_unknown_options": True}


@room_cli.command("log-id", context_settings=ROOMID_ARGUMENT)
@click.argument("roomid")
def log_id_command(roomid: str) -> None:
    """Print the short form under which ROOMID appears in this installation's logs
    (the same SECRET_KEY or instance folder as the server's gives the same form)."""
    if not rules.looks_like_roomid(roomid):
        raise click.UsageError(f"{roomid!r} is not a room id.")
    click.echo(room_log_id(current_app, roomid))
