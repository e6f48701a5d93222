"""Debian's nginx, run unprivileged from a private folder, with the shipped server
block (`deploy/nginx.conf`) in front of real gunicorn with the shipped config.

`local_server_block` rewrites only what a test machine must: the listening ports
(on 127.0.0.1 only), the upstream's port, and TLS: without a certificate the
`ssl http2` of the listen line and the `ssl_certificate` lines go (plain HTTP),
with one only the certificate paths change. It can also switch on the commented
variant that mounts the app under /chat/. Each rewrite must match the shipped
file exactly as often as expected, so a change there fails loudly here.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from support import Service, free_port, gunicorn_service, require_executable

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"
UNDER_CHAT = re.compile(
    r"^ *# --- flaskchat under /chat/: begin ---\n(.*?)^ *# --- flaskchat under /chat/: end ---\n",
    re.MULTILINE | re.DOTALL,
)

# The main configuration around the server block. Everything nginx writes stays in
# its folder. It ignores the app's `X-Accel-Buffering: no`, so that whether events
# arrive at once rests on the shipped file alone.
MAIN = """\
{user}worker_processes 1;
pid nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    proxy_ignore_headers X-Accel-Buffering;
    include flaskchat.conf;
}}
"""


def replace(pattern: str, replacement: str, text: str, count: int) -> str:
    """`re.sub` on lines, which must match exactly `count` times."""
    result, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, f"{pattern!r} matched {found} times in {SHIPPED}, not {count}"
    return result


def local_server_block(
    port: int,
    redirect_port: int,
    upstream_port: int,
    *,
    certificate: tuple[Path, Path] | None = None,
    under_chat: bool = False,
) -> str:
    """The shipped file, listening on 127.0.0.1:`port` (and `redirect_port` for its
    redirect to HTTPS), in front of gunicorn on 127.0.0.1:`upstream_port`."""
    text = SHIPPED.read_text()
    text = replace(r"^( *)listen \[::\]:\d+.*\n", "", text, 2)
    text = replace(r"^( *listen) 80;", rf"\1 127.0.0.1:{redirect_port};", text, 1)
    if certificate is None:
        text = replace(r"^( *listen) 443 ssl http2;", rf"\1 127.0.0.1:{port};", text, 1)
        text = replace(r"^ *ssl_certificate(_key)? .*\n", "", text, 2)
    else:
        text = replace(r"^( *listen) 443 ", rf"\1 127.0.0.1:{port} ", text, 1)
        text = replace(r"^( *ssl_certificate) .*;", rf"\1 {certificate[0]};", text, 1)
        text = replace(r"^( *ssl_certificate_key) .*;", rf"\1 {certificate[1]};", text, 1)
    text = replace(r"^( *server) 127\.0\.0\.1:8000;", rf"\1 127.0.0.1:{upstream_port};", text, 1)
    if under_chat:
        match = UNDER_CHAT.search(text)
        assert match, f"no /chat/ variant in {SHIPPED}"
        enabled = replace(r"^( *)# ", r"\1", match.group(1), match.group(1).count("\n"))
        text = text[: match.start()] + enabled + text[match.end() :]
    return text


class Nginx(Service):
    """nginx serving `server_block` from `directory`, which holds everything it
    reads and writes; `port` is where the test reaches it."""

    def __init__(self, directory: Path, server_block: str, port: int) -> None:
        executable = require_executable("nginx", "/usr/sbin/nginx")
        for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / "tmp" / temp).mkdir(parents=True, exist_ok=True)
        # Run as root, nginx would hand its workers to `nobody`, who cannot
        # enter the test's folder: keep them as whoever runs the tests.
        user = ""
        if os.geteuid() == 0:
            user = (
                f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
            )
        (directory / "nginx.conf").write_text(MAIN.format(user=user))
        (directory / "flaskchat.conf").write_text(server_block)
        argv = [
            executable,
            *("-p", f"{directory}/", "-e", "error.log", "-c", "nginx.conf"),
            *("-g", "daemon off;"),
        ]
        super().__init__(argv, port, cwd=directory, log=directory / "nginx.out")

    def start(self, timeout: float = 30) -> Self:
        try:
            return super().start(timeout)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"nginx did not start:\n{self.logs()}") from error

    def logs(self) -> str:
        """What nginx printed, then its error log."""
        error_log = Path(str(self.cwd)) / "error.log"
        return super().logs() + (error_log.read_text() if error_log.exists() else "")


@dataclass
class Proxied:
    """gunicorn, and nginx in front of it: `url` is nginx's, `redirect_port` the
    port of the shipped redirect to HTTPS."""

    gunicorn: Service
    nginx: Nginx
    redirect_port: int

    @property
    def url(self) -> str:
        return self.nginx.url

    def access_log(self, containing: str = "", count: int = 1, timeout: float = 10) -> list[str]:
        """gunicorn's access log lines (in ACCESS_LOG_FORMAT) that contain `containing`,
        once there are `count` of them: a worker logs a request after answering it."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [
                line
                for line in self.gunicorn.logs().splitlines()
                if line.startswith("access ") and containing in line
            ]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


# What the app saw of each request, after `ProxyFix`: the client address, scheme,
# host, then the request line with its SCRIPT_NAME, and the status.
ACCESS_LOG_FORMAT = "access %(h)s %({wsgi.url_scheme}e)s %({http_host}e)s %(r)s %(s)s"


@contextlib.contextmanager
def behind_nginx(
    directory: Path,
    store_url: str,
    *,
    env: dict[str, str] | None = None,
    certificate: tuple[Path, Path] | None = None,
    under_chat: bool = False,
) -> Iterator[Proxied]:
    """Two gevent workers with the shipped gunicorn config, trusting one proxy,
    behind nginx with the shipped server block; both stopped on leaving."""
    gunicorn = gunicorn_service(
        store_url,
        directory / "gunicorn.log",
        *("-c", "python:flaskchat.gunicorn_config", "--graceful-timeout", "3"),
        *("--access-logformat", ACCESS_LOG_FORMAT),
        env={
            "FLASKCHAT_TRUSTED_PROXIES": "1",
            "FLASKCHAT_PASSWORD_HASH_METHOD": "scrypt:1024:8:1",
            # Streams notice a closed client at their next keep-alive: stop quickly.
            "FLASKCHAT_SSE_KEEPALIVE": "1",
            **(env or {}),
        },
    )
    port, redirect_port = free_port(), free_port()
    folder = directory / "nginx"
    folder.mkdir()
    server_block = local_server_block(
        port, redirect_port, gunicorn.port, certificate=certificate, under_chat=under_chat
    )
    nginx = Nginx(folder, server_block, port)
    gunicorn.start()
    try:
        nginx.start()
        try:
            yield Proxied(gunicorn, nginx, redirect_port)
        finally:
            nginx.stop()
    finally:
        gunicorn.stop(signal.SIGINT)  # at once, not after its graceful timeout
