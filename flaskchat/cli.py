"""`flask --app flaskchat store ...`: maintenance commands for the store."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .backends import open_backend
from .transfer import DestinationNotEmpty, copy_rooms

store_cli = AppGroup("store", help="Work with flaskchat stores.")


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
