"""Work that must not stall a gevent worker: it runs in real threads of its own,
password hashing at a lower priority than the event loop."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from flaskchat.live import run_cpu_bound

# Under gevent: the thread that hashes, and the event loop, report their nice
# values and thread ids; a ticker greenlet counts how often the loop ran meanwhile.
UNDER_GEVENT = """
from gevent import monkey

monkey.patch_all()
import json, os, threading, time

import gevent

from flaskchat.live import run_cpu_bound

ticks = 0

def tick():
    global ticks
    while True:
        ticks += 1
        gevent.sleep(0.001)

def busy():
    until = time.perf_counter() + 0.2
    while time.perf_counter() < until:
        pass
    return os.getpriority(os.PRIO_PROCESS, 0), threading.get_native_id()

ticker = gevent.spawn(tick)
gevent.sleep(0.01)
nice, worker_thread = run_cpu_bound(busy)
ticker.kill()
print(json.dumps({
    "nice": nice,
    "loop_nice": os.getpriority(os.PRIO_PROCESS, 0),
    "same_thread": worker_thread == threading.get_native_id(),
    "ticks": ticks,
}))
"""


def test_cpu_bound_work_runs_in_a_low_priority_thread_under_gevent() -> None:
    out = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result = json.loads(out)
    assert result["same_thread"] is False
    assert result["nice"] >= result["loop_nice"] + 10
    assert result["ticks"] >= 10  # the loop kept running during 0.2 s of CPU work


def test_without_gevent_it_is_a_plain_call_in_the_calling_thread() -> None:
    assert run_cpu_bound(divmod, 7, 2) == (3, 1)
    assert run_cpu_bound(threading.get_native_id) == threading.get_native_id()
