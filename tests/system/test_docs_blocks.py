"""The shell blocks of docs/api.md run as written, in order, against a real
server: only the address of `make run` is replaced by the test server's, and
the placeholder ROOMID of the operator block by the room the blocks made."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import gunicorn_service, require_executable

pytestmark = pytest.mark.system

DOCS = Path(__file__).resolve().parents[2] / "docs"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def test_the_api_examples_run_in_order(tmp_path: Path) -> None:
    require_executable("curl")
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    server = gunicorn_service(store_url, tmp_path / "server.log", "-k", "gevent").start()
    flask = str(Path(sys.executable).parent / "flask")
    script = "\n".join(shell_blocks((DOCS / "api.md").read_text()))
    script = script.replace("http://127.0.0.1:5000", server.url)
    script = script.replace("flask --app", f"{flask} --app").replace("ROOMID", "$roomid")
    try:
        run = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={"FLASKCHAT_STORE_URL": store_url, "PATH": "/usr/bin:/bin"},
        )
    finally:
        server.stop()
    out = run.stdout
    replies = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert replies, run.stderr
    refused = [reply for reply in replies if reply.get("succeeded") is False]
    assert refused == [], (refused, run.stderr)
    assert "<alice> what's going on?" in out  # get_conversation
    assert "event: presence" in out and '"online": ["alice"]' in out  # the ticketed stream
    assert {"registration": "open", "retention_days": None, "banned": ["bob"]} in replies
    assert "<bob> hi all" in out  # the export as lines
    assert "\tBob and Al's room" in out  # flask room list
    assert "Traceback" not in run.stderr
