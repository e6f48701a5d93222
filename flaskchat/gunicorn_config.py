"""Recommended gunicorn settings for production.

    gunicorn -c python:flaskchat.gunicorn_config 'flaskchat:create_app()'

Every value can still be overridden on the command line or through
`GUNICORN_CMD_ARGS`. Event streams hold one connection each for as long as a
page is open, so the worker must be asynchronous (gevent): one process then
holds thousands of them.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from typing import Any

bind = os.environ.get("FLASKCHAT_BIND", "127.0.0.1:8000")
# gunicorn's gevent worker, plus a cap on open connections per client IP
# (FLASKCHAT_MAX_CONNECTIONS_PER_IP, in each worker): see flaskchat.worker.
worker_class = "flaskchat.worker.GeventWorker"
# Python runs on one core per process; CPU-heavy work (password hashing) runs in
# each worker's thread pool, so one worker per core is enough.
workers = int(os.environ.get("FLASKCHAT_WORKERS", multiprocessing.cpu_count()))
# Open event streams a worker may hold (gunicorn's default, 1000, is too few).
worker_connections = 10_000
# A gevent worker keeps heart-beating while streams are open, so this only kills
# a worker that is really stuck.
timeout = 30
graceful_timeout = 10
# Idle keep-alive connections between requests, in seconds.
keepalive = 5
# Request line and headers stay small, so a slow or malicious client cannot make
# the worker buffer much.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# Let the app trust X-Forwarded-* only through FLASKCHAT_TRUSTED_PROXIES.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicorn's control socket defaults to one path per user, which two servers on
# one machine would fight over; flaskchat does not use it.
control_socket_disable = True
accesslog = "-"
# %(U)s is the path without its query string: stream tickets never reach the log.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
# Escapes every logged field (a request cannot forge a line) and logs a room id
# only in its short form (/r:3fa9c1/login): see flaskchat.logs.
logger_class = "flaskchat.gunicorn_logging.Logger"


# With FLASKCHAT_METRICS=true, every worker counts into files in one folder and
# /metrics adds them up (prometheus_client's multiprocess mode): see flaskchat.metrics.
_metrics_folder: str | None = None


def on_starting(server: Any) -> None:
    """Check the settings (a bad value stops gunicorn here with one line, before
    any worker starts), then prepare the metrics folder before any worker is forked."""
    global _metrics_folder
    from flaskchat.app import check_settings_before_serving
    from flaskchat.metrics import prepare_worker_files

    check_settings_before_serving()
    _metrics_folder = prepare_worker_files()


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's open event streams stop counting."""
    from flaskchat.metrics import forget_worker

    forget_worker(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics folder if `on_starting` made it."""
    if _metrics_folder is not None:
        shutil.rmtree(_metrics_folder, ignore_errors=True)
