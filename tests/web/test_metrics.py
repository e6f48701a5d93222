"""`/metrics`: absent unless `METRICS` is on, then readable only from the addresses
in `METRICS_ALLOW` (through ProxyFix when a proxy is trusted); counts what happened
by endpoint and status, and never shows a room id. Counts are per process, so each
test compares a scrape before with one after."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from flaskchat import create_app
from flaskchat.metrics import MISSING, PRELOADED, prepare_worker_files

from actions import ChatActions
from support import close_app, free_port

CHEAP_HASH = "scrypt:1024:8:1"
NOT_FOUND = {"succeeded": False, "explanation": "There is nothing at this address."}
# A series: metric sample name and its labels.
Series = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"METRICS": True, "PASSWORD_HASH_METHOD": CHEAP_HASH}


@contextmanager
def built(store_url: str, **config: Any) -> Iterator[FlaskClient]:
    """A test client of an app built with `config`, closed afterwards."""
    app = create_app({"TESTING": True, "STORE_URL": store_url, **config})
    try:
        yield app.test_client()
    finally:
        close_app(app)


def scrape(client: Any) -> Counter[Series]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    values: Counter[Series] = Counter()
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def series(name: str, **labels: str) -> Series:
    return (name, frozenset(labels.items()))


def requests(endpoint: str, status: int) -> Series:
    return series("flaskchat_http_requests_total", endpoint=endpoint, status=str(status))


def delta(before: Counter[Series], after: Counter[Series]) -> Counter[Series]:
    """What changed between two scrapes (histogram buckets and sums left out)."""
    return Counter(
        {
            key: after[key] - before[key]
            for key in after
            if after[key] != before[key] and not key[0].endswith(("_bucket", "_sum", "_created"))
        }
    )


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    with built(f"sqlite:///{tmp_path / 'chat.sqlite3'}") as client:
        response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json == NOT_FOUND


def test_counts_add_up_by_endpoint_and_status(client: Any, chat: ChatActions) -> None:
    roomid = chat.create_room()
    token = chat.join(roomid, "alice")
    before = scrape(client)
    for n in range(3):
        assert chat.say(roomid, "alice", token, f"hello {n}").status_code == 200
    assert chat.say(roomid, "alice", "not a token", "hello").status_code == 401
    for name in ("alice", "nobody"):
        wrong = {"username": name, "password": "not the password"}
        assert client.post(f"/{roomid}/login", json=wrong).status_code == 401
    assert client.get(f"/{'A' * 22}/get_conversation").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)

    assert delta(before, after) == {
        series("flaskchat_messages_posted_total"): 3,
        series("flaskchat_logins_failed_total"): 2,
        requests("rooms.message", 200): 3,
        requests("rooms.message", 401): 1,
        requests("rooms.login", 401): 2,
        requests("rooms.get_conversation", 404): 1,
        requests("unmatched", 404): 1,
        requests("metrics", 200): 1,  # the first scrape
        **{
            series("flaskchat_http_request_duration_seconds_count", **dict(key[1])): value
            for key, value in {
                requests("rooms.message", 200): 3,
                requests("rooms.message", 401): 1,
                requests("rooms.login", 401): 2,
                requests("rooms.get_conversation", 404): 1,
                requests("unmatched", 404): 1,
                requests("metrics", 200): 1,
            }.items()
        },
    }


def test_labels_are_endpoint_names_and_never_a_room_id(
    client: Any, chat: ChatActions, app: Flask
) -> None:
    def visit_new_rooms() -> None:
        roomid = chat.create_room()
        for path in ("/", "/get_conversation", "/messages", "/nothing-here"):
            client.get(f"/{roomid}{path}")
            client.get(f"/{'B' * 21}{len(path)}{path}")
        client.post(f"/{roomid}/register", json={"username": "x", "password": "short"})

    visit_new_rooms()
    first = scrape(client)
    visit_new_rooms()
    second = scrape(client)

    assert first.keys() == second.keys()  # more rooms, no more series
    text = client.get("/metrics").get_data(as_text=True)
    for roomid in app.extensions["flaskchat"].snapshot():
        assert roomid not in text
    endpoints = {dict(labels).get("endpoint") for _, labels in second} - {None}
    assert endpoints <= {*app.view_functions, "unmatched"}
    assert "rooms.room_page" in endpoints and "lobby.create_room" in endpoints


def test_open_event_streams_are_counted_until_they_close(app: Flask, chat: ChatActions) -> None:
    roomid = chat.create_room()
    client = app.test_client()
    opened = series("flaskchat_event_streams_open")
    before = scrape(client)[opened]
    streams = [client.get(f"/{roomid}/events") for _ in range(2)]
    assert [s.status_code for s in streams] == [200, 200]
    assert scrape(client)[opened] == before + 2
    streams[0].close()
    assert scrape(client)[opened] == before + 1
    streams[0].close()  # closing twice counts once
    streams[1].close()
    assert scrape(client)[opened] == before


def test_store_errors_are_counted(tmp_path: Path) -> None:
    with built(f"redis://127.0.0.1:{free_port()}/0", METRICS=True) as client:
        before = scrape(client)
        response = client.post("/createroom", json={"alias": "nowhere"})
        assert response.status_code == 503
        assert response.json["roomid"] is None  # the view's own failure shape
        assert client.get(f"/{'A' * 22}/messages").status_code == 503
        after = scrape(client)
    changed = delta(before, after)
    assert changed[series("flaskchat_store_errors_total")] == 2
    assert changed[requests("lobby.create_room", 503)] == 1


@pytest.mark.parametrize(
    ("allow", "address", "status"),
    [
        (None, "127.0.0.1", 200),
        (None, "127.0.0.53", 200),
        (None, "::1", 200),
        (None, "::ffff:127.0.0.1", 200),
        (None, "203.0.113.9", 404),
        (None, "::ffff:203.0.113.9", 404),
        (None, "", 404),
        (["203.0.113.0/24"], "203.0.113.9", 200),
        (["203.0.113.0/24"], "127.0.0.1", 404),
        ("10.0.0.1, 2001:db8::/32", "2001:db8::7", 200),
        ("10.0.0.1, 2001:db8::/32", "10.0.0.1", 200),
        ("10.0.0.1, 2001:db8::/32", "10.0.0.2", 404),
    ],
)
def test_only_allowed_addresses_may_read(
    store_url: str, allow: Any, address: str, status: int
) -> None:
    config = {"METRICS": True} if allow is None else {"METRICS": True, "METRICS_ALLOW": allow}
    with built(store_url, **config) as client:
        response = client.get("/metrics", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == status
    if status == 404:
        assert response.json == NOT_FOUND


def test_behind_a_trusted_proxy_the_forwarded_client_is_checked(store_url: str) -> None:
    with built(store_url, METRICS=True, TRUSTED_PROXIES=1) as client:
        outside = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        inside = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert (outside.status_code, inside.status_code) == (404, 200)
    assert outside.json == NOT_FOUND


# Start-up


def test_a_bad_allow_list_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="METRICS_ALLOW"):
        create_app(
            {
                "TESTING": True,
                "STORE_URL": f"sqlite:///{tmp_path / 'chat.sqlite3'}",
                "METRICS": True,
                "METRICS_ALLOW": ["localhost"],
            }
        )


def test_without_prometheus_client_start_up_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    config = {"TESTING": True, "STORE_URL": f"sqlite:///{tmp_path / 'chat.sqlite3'}"}
    close_app(create_app(config))  # metrics off: nothing needs it
    with pytest.raises(RuntimeError) as raised:
        create_app({**config, "METRICS": True})
    assert str(raised.value) == MISSING
    assert "pip install 'flaskchat[metrics]'" in MISSING and "\n" not in MISSING
    monkeypatch.setenv("FLASKCHAT_METRICS", "true")
    with pytest.raises(RuntimeError, match="flaskchat\\[metrics\\]"):
        prepare_worker_files()  # gunicorn's on_starting, before any worker


def test_gunicorn_hook_does_nothing_with_metrics_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for off in ("", "false", "0"):
        monkeypatch.setenv("FLASKCHAT_METRICS", off)
        assert prepare_worker_files() is None
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_preloading_without_a_metrics_folder_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client, already imported here as a preloaded app would have it,
    chose single-process counting when imported: workers would count alone."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("FLASKCHAT_METRICS", "true")
    with pytest.raises(RuntimeError) as raised:
        prepare_worker_files()
    assert str(raised.value) == PRELOADED
