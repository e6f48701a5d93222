"""gunicorn's gevent worker with a cap on open connections per client IP, event
streams handed over to their rooms' feeds included.

A gevent worker holds thousands of connections (`worker_connections`), so
without a cap one machine could take all of them. The cap is the app's
`MAX_CONNECTIONS_PER_IP` setting and, like the event-stream cap inside it, is
counted in each worker process. Connections from a proxy that the app trusts
(`FLASKCHAT_TRUSTED_PROXIES` > 0 and the peer in gunicorn's
`forwarded_allow_ips`) are not capped, since they carry many clients: behind
nginx, its `limit_conn` caps each client instead.

    gunicorn -k flaskchat.worker.GeventWorker 'flaskchat:create_app()'
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from collections import Counter
from typing import Any

from gunicorn.workers import ggevent  # type: ignore[import-untyped]
from gunicorn.workers.base_async import ALREADY_HANDLED  # type: ignore[import-untyped]

from .settings import DEFAULTS

# Seconds an over-cap client is told to wait.
RETRY_AFTER = 10

_EXPLANATION = "Too many connections are open from your address. Please close a tab and try again."
_BODY = json.dumps({"succeeded": False, "explanation": _EXPLANATION}).encode()
REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: %d\r\n"
    b"Connection: close\r\n\r\n%s"
) % (len(_BODY), RETRY_AFTER, _BODY)


class GeventWorker(ggevent.GeventWorker):  # type: ignore[misc]
    """Counts open connections per peer IP and refuses those over the cap with a
    short 429. The counter has an entry only per IP with a connection open, so
    it never outgrows `worker_connections`; all greenlets run in one thread and
    nothing between a check and its update yields, so it needs no lock."""

    def run(self) -> None:
        """Read the caps once the app is loaded, then serve."""
        config = getattr(self.wsgi, "config", DEFAULTS)
        self.max_connections_per_ip = int(config["MAX_CONNECTIONS_PER_IP"])
        allowed = list(self.cfg.forwarded_allow_ips) if int(config["TRUSTED_PROXIES"]) else []
        self.trust_every_peer = "*" in allowed
        self.proxies = [ipaddress.ip_network(a) for a in allowed if a != "*"]
        self.open_connections: Counter[str] = Counter()
        # Event streams handed over to their rooms' feeds (`flaskchat.fanout`):
        # gunicorn no longer holds them, but they still count.
        fanout = getattr(self.wsgi, "extensions", {}).get("flaskchat_fanout")
        self.handed_over: Counter[str] = Counter() if fanout is None else fanout.held
        super().run()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        ip = addr[0] if isinstance(addr, tuple) and addr else None
        if ip is None or self.is_trusted_proxy(ip):
            super().handle(listener, client, addr)
            return
        if self.open_connections[ip] + self.handed_over[ip] >= self.max_connections_per_ip:
            self.log.debug("Refused a connection from %s: over its cap", ip)
            refuse(client)
            return
        self.open_connections[ip] += 1
        try:
            super().handle(listener, client, addr)
        finally:
            self.open_connections[ip] -= 1
            if self.open_connections[ip] <= 0:
                del self.open_connections[ip]

    def is_already_handled(self, respiter: object) -> bool:
        """A response that took its connection over (an event stream handed to its
        room's feed) ends gunicorn's part at once: without this, gunicorn would go
        on reading the connection for a next request until its keep-alive timeout,
        holding its copy open, and a stream's end would reach the client late."""
        if respiter is ALREADY_HANDLED:
            raise StopIteration
        return False

    def is_trusted_proxy(self, ip: str) -> bool:
        if self.trust_every_peer or not self.proxies:
            return self.trust_every_peer
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.proxies)


def refuse(client: socket.socket) -> None:
    """Answer 429 and hang up. What the client already sent is read first (without
    waiting), so that closing does not reset the connection before it reads the
    answer."""
    with contextlib.suppress(OSError):
        client.settimeout(1.0)
        client.sendall(REFUSAL)
        client.setblocking(False)
        client.recv(64 * 1024)
    client.close()
