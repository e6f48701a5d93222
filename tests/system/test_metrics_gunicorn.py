"""Metrics under real gunicorn with the shipped config and two workers: whichever
worker answers, a scrape adds up the counts of all of them, counts of an earlier
run are gone, a dead worker's open streams stop counting, and the temporary
folder the counts live in is removed when the server stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import EventStream, Service, call, gunicorn_service

pytestmark = pytest.mark.system

SHIPPED = ("-c", "python:flaskchat.gunicorn_config")
# Each request's worker in the access log.
PID_LOG = ("--access-logfile", "-", "--access-logformat", "pid=%(p)s %(m)s %(U)s %(s)s")
PASSWORD = "correct horse battery"
CHEAP_HASH = "scrypt:1024:8:1"


def metrics_server(tmp_path: Path, **env: str) -> Service:
    environment = {
        "FLASKCHAT_METRICS": "true",
        "FLASKCHAT_PASSWORD_HASH_METHOD": CHEAP_HASH,
        "FLASKCHAT_SSE_KEEPALIVE": "0.5",
        **env,
    }
    return gunicorn_service(
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        tmp_path / "gunicorn.log",
        *SHIPPED,
        *PID_LOG,
        workers=2,
        env=environment,
    )


def scrape(server: Service) -> dict[str, float]:
    """Every sample of `/metrics`, named with its labels as Prometheus writes them."""
    status, text = call(server.url, "/metrics")
    assert status == 200, text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def eventually(check: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def workers_that_answered(server: Service, path_end: str) -> set[str]:
    return {
        line.split()[0]
        for line in server.logs().splitlines()
        if line.startswith("pid=") and line.split()[2].endswith(path_end)
    }


def room_with_alice(server: Service) -> tuple[str, str]:
    status, body = call(server.url, "/createroom", {"alias": "counted"})
    assert status == 200, body
    roomid = body["roomid"]
    alice = {"username": "alice", "password": PASSWORD}
    assert call(server.url, f"/{roomid}/register", alice)[0] == 200
    status, body = call(server.url, f"/{roomid}/login", alice)
    assert status == 200, body
    return roomid, body["token"]


def counts_of_an_earlier_run(folder: Path) -> None:
    """Leave in `folder` what a worker of an earlier run would have: 1000 messages."""
    script = (
        "from prometheus_client import Counter; Counter('flaskchat_messages_posted', '').inc(1000)"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        check=True,
        timeout=60,
    )
    assert list(folder.glob("counter_*.db"))


def test_two_workers_add_up(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    counts_of_an_earlier_run(folder)
    server = metrics_server(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(folder))
    server.start()
    try:
        roomid, token = room_with_alice(server)
        said = {"username": "alice", "token": token, "message": "hello"}
        sent = 0
        # One connection per request, until both workers have taken some.
        while sent < 20 or len(workers_that_answered(server, "/message")) < 2:
            assert sent < 500, "one worker answered every request"
            assert call(server.url, f"/{roomid}/message", said)[0] == 200
            sent += 1
        wrong = {"username": "alice", "password": "not the password"}
        for _ in range(6):
            assert call(server.url, f"/{roomid}/login", wrong)[0] == 401

        streams = [EventStream(server.url, f"/{roomid}/events") for _ in range(4)]
        try:
            for stream in streams:
                assert stream.next_event().event == "presence"
            opened = scrape(server)["flaskchat_event_streams_open"]
        finally:
            for stream in streams:
                stream.close()
        assert opened == 4
        assert eventually(lambda: scrape(server)["flaskchat_event_streams_open"] == 0)
        metrics = scrape(server)
    finally:
        server.stop()

    assert metrics["flaskchat_messages_posted_total"] == sent
    assert metrics["flaskchat_logins_failed_total"] == 6
    assert metrics['flaskchat_http_requests_total{endpoint="rooms.message",status="200"}'] == sent
    assert metrics['flaskchat_http_requests_total{endpoint="rooms.login",status="401"}'] == 6
    assert metrics['flaskchat_http_requests_total{endpoint="rooms.events",status="200"}'] == 4
    duration = (
        'flaskchat_http_request_duration_seconds_count{endpoint="rooms.message",status="200"}'
    )
    assert metrics[duration] == sent
    assert not any(roomid in name for name in metrics)


def worker_pids(master: int) -> set[int]:
    """The children of gunicorn's master, from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == master:
            children.add(int(stat.parent.name))
    return children


def test_dead_workers_streams_stop_counting_and_the_folder_goes_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = metrics_server(tmp_path, TMPDIR=str(temporary))
    server.start()
    try:
        [folder] = temporary.iterdir()
        assert re.fullmatch(r"flaskchat-metrics-.+", folder.name)
        roomid, token = room_with_alice(server)
        said = {"username": "alice", "token": token, "message": "before the crash"}
        assert call(server.url, f"/{roomid}/message", said)[0] == 200
        with EventStream(server.url, f"/{roomid}/events") as stream:
            assert stream.next_event().event == "presence"
            assert scrape(server)["flaskchat_event_streams_open"] == 1
            assert server.process is not None
            master = server.process.pid
            workers = worker_pids(master)
            assert len(workers) == 2
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: len(worker_pids(master) - workers) == 2)
        metrics = scrape(server)
        assert metrics["flaskchat_event_streams_open"] == 0
        assert metrics["flaskchat_messages_posted_total"] == 1  # counters outlive workers
    finally:
        server.stop()
    assert list(temporary.iterdir()) == []
