"""`flask --app flaskchat store ...`: maintenance commands for the store.

Each failure is one line that says what went wrong (an unreachable store, a file
that cannot be written, a URL of no known kind), never a traceback."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from . import rules
from .backends import Backend, open_backend
from .backends.sqlite import SqliteBackend
from .config_check import public_url
from .errors import RoomNotFound, StoreUnavailable
from .logs import room_log_id
from .rooms import export_json
from .store import RoomStore
from .transfer import (
    CheckReport,
    CopyReport,
    DestinationNotEmpty,
    backup_store,
    check_store,
    copy_rooms,
    new_sqlite_file,
    sqlite_file,
)

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
    such as sqlite:///flaskchat.sqlite3 or redis://127.0.0.1:6379/0). A new
    SQLite file appears only once the copy is whole."""
    src = open_store_url(source, must_exist=True)
    try:
        with failures_as_one_line(f"Cannot read {public_url(source)}"):
            src.room_ids()  # an unreachable source is said before anything is made
        with failures_as_one_line(f"The copy to {public_url(destination)} failed"):
            report = copy_to(src, destination, replace=replace)
    finally:
        src.close()
    click.echo(
        f"Copied {report.rooms} rooms, {report.users} accounts and {report.messages} messages."
    )


def copy_to(source: Backend, destination: str, *, replace: bool) -> CopyReport:
    """Copy into the store at `destination`; a SQLite file that does not exist yet
    is written under a temporary name first, so a copy that fails leaves none."""
    new_file = sqlite_file(destination, current_app.instance_path)
    if new_file is not None and not new_file.exists():
        with new_sqlite_file(new_file) as draft:
            return copy_and_close(source, SqliteBackend(draft))
    return copy_and_close(source, open_store_url(destination), replace=replace)


def copy_and_close(source: Backend, destination: Backend, *, replace: bool = False) -> CopyReport:
    try:
        return copy_rooms(source, destination, replace=replace)
    finally:
        destination.close()


@store_cli.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Overwrite PATH if it exists.")
def backup_command(path: Path, replace: bool) -> None:
    """Write a copy of the configured store into the new SQLite file PATH while
    servers keep writing to it: a SQLite store as one consistent snapshot
    (SQLite's online backup API), a Redis store room by room. Restore with
    `store copy` from sqlite:////PATH, or by pointing FLASKCHAT_STORE_URL at it."""
    url = str(current_app.config["STORE_URL"])
    if url == "memory://":
        raise click.ClickException(
            "The store is memory://, which lives inside each server process: nothing to back up."
        )
    if path.exists() and not replace:
        raise click.ClickException(f"{path} exists already: pass --replace to overwrite it.")
    backend = current_app.extensions["flaskchat"].backend
    with failures_as_one_line(f"The backup of {public_url(url)} to {path} failed"):
        report = backup_store(backend, path, replace=replace)
    if report.problems:
        raise click.ClickException(f"Backed up to {path}, but {problems_line(report)}")
    click.echo(f"Backed up {public_url(url)} to {path}: {counts_line(report)}.")


@store_cli.command("check")
@click.argument("url", required=False)
def check_command(url: str | None) -> None:
    """Check a store, the configured one or URL: every room listed has its alias,
    every message reads back, and on SQLite `PRAGMA integrity_check` and
    `foreign_key_check` find nothing. Prints the counts; exits non-zero with one
    line on any problem."""
    url = url or str(current_app.config["STORE_URL"])
    backend = open_store_url(url, must_exist=True)
    try:
        with failures_as_one_line(f"Cannot check {public_url(url)}"):
            report = check_store(backend)
    finally:
        backend.close()
    if report.problems:
        raise click.ClickException(f"{public_url(url)}: {problems_line(report)}")
    click.echo(f"{public_url(url)} is fine: {counts_line(report)}.")


class BadUrl(click.ClickException):
    """A store URL of no known kind: a usage error (exit status 2), said in one
    line, where click's UsageError would add the usage text."""

    exit_code = 2


def open_store_url(url: str, *, must_exist: bool = False) -> Backend:
    """The backend of `url`; with `must_exist`, a SQLite file is never created."""
    path = sqlite_file(url, current_app.instance_path)
    if must_exist and path is not None and not path.is_file():
        raise click.ClickException(f"There is no SQLite file at {path}.")
    try:
        return open_backend(url, current_app.instance_path)
    except ValueError as error:  # of the URL
        raise BadUrl(str(error)) from None
    except StoreUnavailable as error:
        raise click.ClickException(f"Cannot open {public_url(url)}: {reason(error)}") from None


@contextlib.contextmanager
def failures_as_one_line(what: str) -> Iterator[None]:
    """Turn an unreachable store, a refused file or a SQLite error into one line
    that starts with `what` and says why."""
    try:
        yield
    except DestinationNotEmpty as error:
        raise click.ClickException(f"{error} Pass --replace to copy anyway.") from None
    except StoreUnavailable as error:
        raise click.ClickException(f"{what}: {reason(error)}") from None
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        raise click.ClickException(f"{what}: {error.strerror or error}{where}") from None
    except (sqlite3.Error, ValueError) as error:
        raise click.ClickException(f"{what}: {error}") from None


def reason(error: StoreUnavailable) -> str:
    """What the backend's own library said, where it said something."""
    cause = error.__cause__
    text = str(cause).strip() if cause is not None else ""
    return text.rstrip(".") + "." if text else error.explanation


def counts_line(report: CheckReport) -> str:
    return f"{report.rooms} rooms, {report.users} accounts and {report.messages} messages"


def problems_line(report: CheckReport) -> str:
    first, more = report.problems[0], len(report.problems) - 1
    return f"{first}" + (f" (and {more} more problems)." if more else ".")


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


# Rooms, with the server's authority: these commands need no owner key.


def room_store() -> RoomStore:
    return current_app.extensions["flaskchat"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def room_failures(roomid: str = "") -> Iterator[None]:
    """An unknown room, or a store that cannot be reached, as one line. A reader
    that hangs up (`| head`) is left to click, which ends quietly."""
    try:
        yield
    except RoomNotFound:
        raise click.ClickException(f"There is no room {roomid!r}.") from None
    except StoreUnavailable as error:
        url = public_url(str(current_app.config["STORE_URL"]))
        raise click.ClickException(f"Cannot use {url}: {reason(error)}") from None


@room_cli.command("list")
def list_command() -> None:
    """Print every room: its id and alias, separated by a tab, one room a line."""
    store = room_store()
    with room_failures():
        for roomid in store.room_ids():
            try:
                alias = store.alias(roomid)
            except RoomNotFound:  # removed meanwhile
                continue
            click.echo(f"{roomid}\t{alias}")


@room_cli.command("show", context_settings=ROOMID_ARGUMENT)
@click.argument("roomid")
def show_command(roomid: str) -> None:
    """Print ROOMID's alias, counts and owner settings (never a key, token or password)."""
    with room_failures(roomid):
        room = room_store().summary(roomid)
    days = room.settings.retention_days
    shown = {
        "room": room.roomid,
        "alias": room.alias,
        "accounts": str(room.accounts),
        "messages": str(room.messages),
        "owner": "yes" if room.has_owner else "none",
        "registration": "open" if room.settings.registration_open else "closed",
        "retention": "for ever" if days is None else f"{days} day{'' if days == 1 else 's'}",
        "banned": ", ".join(room.settings.banned or ()) or "none",
    }
    for name, value in shown.items():
        click.echo(f"{name + ':':<14}{value}")


@room_cli.command("export", context_settings=ROOMID_ARGUMENT)
@click.argument("roomid")
@click.option(
    "--format",
    "kind",
    default="json",
    show_default=True,
    metavar="json|text",
    help="json (as the API's export) or text (the conversation's lines).",
)
def export_command(roomid: str, kind: str) -> None:
    """Write ROOMID's whole history to standard output as it is read, a batch at
    a time, so a room of any size exports in little memory."""
    if kind not in ("json", "text"):
        raise click.ClickException('The format must be "json" or "text".')
    store = room_store()
    with room_failures(roomid):
        alias = store.alias(roomid)
        messages = store.export_room(roomid)
        chunks: Iterator[str]
        if kind == "text":
            chunks = (message.line + "\n" for message in messages)
        else:
            chunks = export_json(roomid, alias, messages)
        for chunk in chunks:
            click.echo(chunk, nl=False)


@room_cli.command("delete", context_settings=ROOMID_ARGUMENT)
@click.argument("roomid")
@click.option("--yes", is_flag=True, help="Delete without asking.")
def delete_command(roomid: str, yes: bool) -> None:
    """Delete ROOMID and every trace of it (accounts, messages, settings); its
    open streams end and its id is never used again."""
    store = room_store()
    with room_failures(roomid):
        alias = store.alias(roomid)
    if not yes:
        click.confirm(f'Delete the room "{alias}" ({roomid}) and everything in it?', abort=True)
    with room_failures(roomid):
        store.remove_room(roomid)
    click.echo(f"Deleted the room {roomid}.")


@room_cli.command("owner-key", context_settings=ROOMID_ARGUMENT)
@click.argument("roomid")
def owner_key_command(roomid: str) -> None:
    """Give ROOMID a new owner key, for an owner who lost theirs (the old key
    stops working). The owner opens the link after the site's address."""
    with room_failures(roomid):
        owner_key = room_store().issue_owner_key(roomid)
    click.echo(f"New owner key for the room {roomid} (the old one no longer works):")
    click.echo(owner_key)
    click.echo(f"Owner link: /{roomid}/#owner={owner_key}")
