"""Prometheus metrics at `GET /metrics`, when the `METRICS` setting is on.

Requests are counted in the app's request hooks by endpoint name and status,
never by path, so a room id never becomes a label value and the number of
series stays fixed whatever clients send. Only addresses in `METRICS_ALLOW`
may read them; everyone else gets the same 404 as when metrics are off.

Under gunicorn with the shipped config every worker writes its counts to files
in one folder (prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`,
prepared by the config's `on_starting` hook) and a scrape adds them up; without
that folder (`flask run`, tests) the counts are this process's own.
prometheus_client is imported only when metrics are on: the `metrics` extra.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import NotFound

from .errors import StoreUnavailable
from .web import handle_store_error

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Where prometheus_client's multiprocess mode keeps each process's counts.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
MISSING = (
    "FLASKCHAT_METRICS is on but prometheus_client is not installed:"
    " pip install 'flaskchat[metrics]'"
)
PRELOADED = (
    "FLASKCHAT_METRICS with --preload needs PROMETHEUS_MULTIPROC_DIR set to a folder"
    " before gunicorn starts, or the workers would each count alone."
)
# The endpoint label of a request that matched no route (404, 405).
UNMATCHED = "unmatched"


@dataclass(frozen=True)
class Metrics:
    """Everything flaskchat counts, and the registry that holds it."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    messages_posted: Counter
    logins_failed: Counter
    store_errors: Counter
    streams_open: Gauge


@functools.cache
def process_metrics() -> Metrics:
    """One set per process, shared by every app in it: in multiprocess mode two
    metrics of one name in one process would overwrite each other's counts."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    by_route = ["endpoint", "status"]
    return Metrics(
        registry=registry,
        requests=Counter(
            "flaskchat_http_requests",
            "Requests answered, by endpoint name and status.",
            by_route,
            registry=registry,
        ),
        latency=Histogram(
            "flaskchat_http_request_duration_seconds",
            "Time to build each reply (for an event stream: until it starts).",
            by_route,
            registry=registry,
        ),
        messages_posted=Counter(
            "flaskchat_messages_posted", "Messages accepted (200 replies).", registry=registry
        ),
        logins_failed=Counter(
            "flaskchat_logins_failed", "Logins refused with 401.", registry=registry
        ),
        store_errors=Counter(
            "flaskchat_store_errors",
            "Requests answered 503 because the store could not be reached.",
            registry=registry,
        ),
        streams_open=Gauge(
            "flaskchat_event_streams_open",
            "Event streams open now.",
            registry=registry,
            multiprocess_mode="livesum",
        ),
    )


def init_app(app: Flask) -> None:
    """With `METRICS` on, count every request of `app` and serve `/metrics`.
    Call before other `before_request` hooks are added, so that the clock
    starts even for requests that those hooks refuse."""
    if not app.config["METRICS"]:
        return
    if importlib.util.find_spec("prometheus_client") is None:
        from .config_check import SettingError  # which imports this module

        raise SettingError(MISSING)  # one line from `flask` and gunicorn, no traceback
    app.extensions["flaskchat_metrics"] = allowed_networks(app.config["METRICS_ALLOW"])
    process_metrics()
    if MULTIPROC_DIR not in os.environ and "gunicorn.arbiter" in sys.modules:  # under gunicorn
        app.logger.warning(
            "Metrics count in each worker alone: start gunicorn with"
            " FLASKCHAT_METRICS=true and -c python:flaskchat.gunicorn_config."
        )
    app.before_request(start_clock)
    app.after_request(count_reply)
    # More specific than the app's StoreError handler, which still shapes the reply.
    app.register_error_handler(StoreUnavailable, count_store_error)
    app.add_url_rule("/metrics", "metrics", serve_metrics)


def allowed_networks(setting: str | Iterable[Any]) -> tuple[Network, ...]:
    """`METRICS_ALLOW` as networks: a list, or one string of comma-separated entries."""
    entries = setting.split(",") if isinstance(setting, str) else setting
    try:
        return tuple(ipaddress.ip_network(str(entry).strip(), strict=False) for entry in entries)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"METRICS_ALLOW must list addresses or networks such as 127.0.0.1/8: {error}"
        ) from None


def start_clock() -> None:
    g.metrics_started = time.perf_counter()


def count_reply(response: Response) -> Response:
    metrics = process_metrics()
    endpoint = request.endpoint or UNMATCHED
    status = response.status_code
    metrics.requests.labels(endpoint, str(status)).inc()
    started = g.pop("metrics_started", None)
    if started is not None:
        elapsed = time.perf_counter() - started
        metrics.latency.labels(endpoint, str(status)).observe(elapsed)
    if endpoint == "rooms.message" and status == 200:
        metrics.messages_posted.inc()
    elif endpoint == "rooms.login" and status == 401:
        metrics.logins_failed.inc()
    elif endpoint == "rooms.events" and status == 200 and response.is_streamed:
        metrics.streams_open.inc()
        response.call_on_close(once(metrics.streams_open.dec))
    return response


def once(action: Callable[[], object]) -> Callable[[], None]:
    """`action`, run at most once however often it is called."""
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


def count_store_error(error: StoreUnavailable) -> Any:
    process_metrics().store_errors.inc()
    return handle_store_error(error)


def serve_metrics() -> Response:
    """The text exposition format, for allowed addresses only: a 404 tells
    others nothing that they could not learn with metrics off."""
    if not client_allowed(current_app.extensions["flaskchat_metrics"]):
        raise NotFound()
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    response = Response(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def client_allowed(networks: Iterable[Network]) -> bool:
    """Whether the client's address (the real one behind trusted proxies, via
    ProxyFix) is in one of `networks`."""
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:  # a Unix socket, or nothing at all
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's form of an IPv4 peer
    return any(address in network for network in networks)


def scrape_registry() -> CollectorRegistry:
    """This process's registry, or the sum of every worker's files."""
    if MULTIPROC_DIR not in os.environ:
        return process_metrics().registry
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


# gunicorn's hooks (see gunicorn_config); these run in the master process.


def metrics_on(environ: Mapping[str, str]) -> bool:
    """`FLASKCHAT_METRICS` read as the app reads it: JSON where it parses."""
    raw = environ.get("FLASKCHAT_METRICS", "")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return bool(value)


def prepare_worker_files() -> str | None:
    """Before gunicorn forks its workers: with metrics on, point all of them at
    one empty folder, set before any of them imports prometheus_client. The
    folder is `PROMETHEUS_MULTIPROC_DIR` if set (its `*.db` files, counts of an
    earlier run, are removed), else a new temporary one, which is returned so
    that it can be removed when the server exits."""
    if not metrics_on(os.environ):
        return None
    if importlib.util.find_spec("prometheus_client") is None:
        raise RuntimeError(MISSING)
    folder = os.environ.get(MULTIPROC_DIR)
    if folder is None:
        if "prometheus_client" in sys.modules:
            raise RuntimeError(PRELOADED)
        created = tempfile.mkdtemp(prefix="flaskchat-metrics-")
        os.environ[MULTIPROC_DIR] = created
        return created
    os.makedirs(folder, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()
    return None


def forget_worker(pid: int) -> None:
    """After a worker exits: its open streams stop counting (the gauge is a
    sum over live processes); its counters stay in the totals, as counters must."""
    if metrics_on(os.environ) and MULTIPROC_DIR in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
