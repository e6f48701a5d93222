"""`redis://host:port/db` or `redis+cluster://host:port,...`: one set of rooms
for many servers.

Install with the `redis` extra (redis-py with hiredis); the client library is
imported only when this backend is opened, or hand over an existing client.

Every key of a room shares the hash tag `{roomid}`, so a room lives in one slot
of a Redis Cluster and its multi-key scripts stay legal there:

    flaskchat:rooms                         SET of room ids
    flaskchat:removed_rooms                 SET of ids of removed rooms, never used again
    flaskchat:health                        STRING written by health checks, expiring
    flaskchat:{roomid}:room                 HASH alias, owner (key digest),
                                            registration ("1"/"0"), retention (days or "")
    flaskchat:{roomid}:bans                 HASH name key -> name as shown
    flaskchat:{roomid}:users                HASH name key -> JSON account
    flaskchat:{roomid}:tokens:<key>         ZSET of token digests by creation time
    flaskchat:{roomid}:messages             STREAM of messages (ids are the stream's) and
                                            events (field k: delete, ban, unban, trim, gone)
    flaskchat:{roomid}:client_ids           HASH "<key> <client_id>" -> message id
    flaskchat:{roomid}:ticket:<digest>      STRING "<expiry> <session> <username>", expiring
    flaskchat:{roomid}:presence             ZSET "<stream> <session> <username>" by expiry
    flaskchat:{roomid}:changed              sharded Pub/Sub channel (cluster only): a
                                            stream entry was written

On a cluster the watcher cannot read every watched stream with one XREAD: Redis
Cluster refuses a command whose keys lie in different slots, even on one node.
Each write to a stream is announced on the room's sharded channel instead, which
lives in the room's slot, and the watcher holds one connection per node,
subscribed to the channels of the rooms whose slots that node owns.

With `min_replicas` above 0, every write that must survive the loss of a master
is followed by `WAIT` on the same connection, and answers `StoreUnavailable` (503)
unless enough replicas confirm it in `wait_ms`. Tickets, presence and the health
key are not waited for: they live seconds and are made again.

Bench-only knob: `FLASKCHAT_REDIS_DIRECT=0` in the environment when the backend
is made sends the hot commands through redis-py's pool instead of `Connections`,
so that `make bench` can compare them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..errors import InvalidInput, StoreUnavailable
from ..live import system_poll
from .base import (
    DELETE,
    GONE,
    TRIM,
    UNSET,
    AddedUser,
    RoomDump,
    RoomSettings,
    StoredMessage,
    Unset,
    UserRecord,
)

if TYPE_CHECKING:
    from redis import Redis

T = TypeVar("T")

PREFIX = "flaskchat"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_ID_PART_MAX = 2**64 - 1
_FIRST_ID, _LAST_ID = "0-0", f"{_ID_PART_MAX}-{_ID_PART_MAX}"
# Written by every health check; gone a minute after the last one.
HEALTH_KEY = f"{PREFIX}:health"
REMOVED = f"{PREFIX}:removed_rooms"
# How long a removed room's "gone" event waits for the listeners of other servers.
GONE_KEPT_MS = 60_000
HEALTH_TTL_MS = 60_000

# Store a message unless this user already sent one with this client_id, stamped
# with Redis's own clock as it is written, so times follow stream ids whichever
# server posts. KEYS: messages stream, client_ids hash. ARGV: client_id field ("" for
# none), username, text.
APPEND_SCRIPT = """
if ARGV[1] ~= '' then
    local existing = redis.call('HGET', KEYS[2], ARGV[1])
    if existing and #redis.call('XRANGE', KEYS[1], existing, existing) > 0 then
        -- Written again, so that a WAIT after a retry covers the first write.
        redis.call('HSET', KEYS[2], ARGV[1], existing)
        return {0, existing, ''}
    end
end
local now = redis.call('TIME')
local us = now[1] .. string.format('%06d', tonumber(now[2]))
local id = redis.call('XADD', KEYS[1], '*', 'u', ARGV[2], 't', ARGV[3], 'us', us)
if ARGV[1] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], id) end
return {1, id, us}
"""

# Remove a message and append a "delete" event for it, unless there is no such
# message. KEYS: messages stream. ARGV: the message id. Returns the event's id
# and time, or nothing.
DELETE_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local fields = found[1][2]
for i = 1, #fields, 2 do
    if fields[i] == 'k' then return false end
end
redis.call('XDEL', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local us = now[1] .. string.format('%06d', tonumber(now[2]))
local id = redis.call('XADD', KEYS[1], '*', 'k', 'delete', 'd', ARGV[1], 'u', '', 't', '', 'us', us)
return {id, us}
"""

# Store an account unless the room is full or the name taken, in one step: a
# script runs alone on the server. KEYS: users hash. ARGV: name key, account
# JSON, the cap. Returns "added", "name taken" or "room full" (`AddedUser`).
ADD_USER_SCRIPT = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 'room full' end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 'name taken' end
return 'added'
"""


def parse_stream_id(message_id: str) -> str:
    """A stream id as Redis writes it: two decimal numbers of 64 bits each."""
    match = _STREAM_ID.fullmatch(message_id)
    if match is None or max(int(match[1]), int(match[2])) > _ID_PART_MAX:
        raise InvalidInput("That is not a message id of this room.")
    return f"{int(match[1])}-{int(match[2])}"


def _now_us() -> str:
    """Now, in microseconds since the epoch, as log entries keep their times."""
    return str((datetime.now(UTC) - EPOCH) // MICROSECOND)


def _key(roomid: str, *parts: str) -> str:
    return ":".join((PREFIX, "{" + roomid + "}", *parts))


def _message(entry_id: str, fields: dict[str, str] | list[str]) -> StoredMessage:
    """A stream entry; its fields come as a flat list from a bare connection."""
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    posted_at = EPOCH + int(fields["us"]) * MICROSECOND
    kind = fields.get("k", "message")
    return StoredMessage(entry_id, posted_at, fields["u"], fields["t"], kind, fields.get("d"))


def _connection_class() -> type[Any]:
    """redis-py's TCP connection, with a cheaper check when the pool hands it out.

    The pool asks every connection it lends whether unread data is waiting. Under
    gevent, redis-py's `select.poll` is gevent's, which goes through the event
    loop: on a one-command request that check cost as much as the command
    (profile of `get_conversation`). A zero-timeout poll never blocks, so the
    system's own is used. Only when the hiredis reader holds nothing either is the
    connection clean at once; anything else takes redis-py's full check.
    """
    import select

    import redis

    poll = system_poll()

    class Connection(redis.Connection):
        def can_read(self, timeout: float = 0) -> bool:
            sock = self._sock
            reader = getattr(self._parser, "_reader", None)  # hiredis's, when used
            if timeout == 0 and sock is not None and reader is not None:
                poller = poll()
                poller.register(sock.fileno(), select.POLLIN)
                if not reader.has_data() and not poller.poll(0):
                    return False
            return bool(super().can_read(timeout))

    return Connection


# Idle connections kept for `Connections`; more at once than this are closed.
IDLE_CONNECTIONS = 64


def _outages() -> tuple[type[Exception], ...]:
    """What a lost or unreachable server raises (redis-py is imported on use),
    and what a cluster answers while a slot moves or a replica takes over."""
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        ConnectionError,
        RedisClusterException,
        TimeoutError,
        TryAgainError,
    )

    return (
        ConnectionError,
        TimeoutError,
        OSError,
        AskError,  # MOVED too: a command sent to one node's own connection
        ClusterDownError,
        TryAgainError,
        RedisClusterException,
    )


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
# A URL's own settings, for scripts: `?min_replicas=1&wait_ms=500`.
_OWN_PARAMETERS = ("min_replicas", "wait_ms")


def _own_parameters(url: str) -> tuple[str, dict[str, int]]:
    """`url` without flaskchat's own query parameters, and their values."""
    parts = urlsplit(url)
    kept, own = [], {}
    for pair in parts.query.split("&") if parts.query else []:
        name, _, value = pair.partition("=")
        if name in _OWN_PARAMETERS:
            if not value.isdigit():
                raise ValueError(f"{name} in a Redis URL takes a whole number, not {value!r}")
            own[name] = int(value)
        else:
            kept.append(pair)
    return parts._replace(query="&".join(kept)).geturl(), own


def _cluster_client(url: str, **options: Any) -> Any:
    """`redis+cluster://[user:password@]host:port[,host:port...][?options]`
    (`rediss+cluster://` for TLS) as redis-py's `RedisCluster`: each listed
    node is a seed from which the client learns the whole cluster."""
    from redis.cluster import ClusterNode, RedisCluster

    scheme, _, rest = url.partition("+cluster://")
    userinfo, at, hosts = rest.rpartition("@")
    hosts, _, query = hosts.partition("?")
    hosts = hosts.split("/", 1)[0]  # a cluster has database 0 only
    seeds = []
    for seed in hosts.split(","):
        host, _, port = seed.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"A cluster URL lists nodes as host:port, not {seed!r}")
        seeds.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]
    first = f"{scheme}://{userinfo}{at}{seeds[0].host}:{seeds[0].port}"
    return RedisCluster.from_url(
        first + (f"/?{query}" if query else ""), startup_nodes=seeds[1:], **options
    )


REFUSED_CREDENTIALS = "The chat store refused the user name or password of its URL."


def _refused_credentials(error: Exception) -> bool:
    from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError

    return isinstance(error, AuthenticationError | AuthenticationWrongNumberOfArgsError) or (
        "NOAUTH" in str(error) or "WRONGPASS" in str(error)
    )


def _check_auth(error: Exception) -> None:
    """Refused credentials are a setting to fix, not an outage: say so in one
    line (a 503 to a client, as every store failure is)."""
    if _refused_credentials(error):
        raise StoreUnavailable(REFUSED_CREDENTIALS) from None


def _refuses_writes(error: Exception) -> bool:
    """A server that answers but will not write now: a read-only replica, one at
    `maxmemory`, one short of `min-replicas-to-write`, a replica cut off from its
    master."""
    from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError

    refusals = (ReadOnlyError, OutOfMemoryError, MasterDownError)
    return isinstance(error, refusals) or str(error).startswith("NOREPLICAS")


class Connections:
    """Connections lent to one command at a time, for the commands every poll and
    post makes. Through the client, each command also went through redis-py's
    pool bookkeeping, retry wrapper, event dispatch and metrics recorder:
    87 us of CPU per command against 46 us for the connection's own send and
    read (measured in one process, hiredis, loopback), and a fifth of the
    worker's time on Redis `get_conversation` (profile). Connections still come
    from the client's own settings, check their health as redis-py's do, and
    one that fails or is interrupted is closed, never lent again."""

    def __init__(self, connection_class: type[Any], options: dict[str, Any]) -> None:
        from redis.exceptions import ResponseError

        self._class, self._options = connection_class, options
        self._outages = _outages()
        self._error_reply = ResponseError
        self._idle: list[Any] = []
        self._pid = os.getpid()

    @classmethod
    def of(cls, client: Any) -> Connections | None:
        """For a plain client; None for others (a cluster, a client-side cache)."""
        from redis import ConnectionPool

        pool = getattr(client, "connection_pool", None)
        # Not every redis-py release that the extra allows has this attribute.
        if type(pool) is not ConnectionPool or getattr(pool, "cache", None) is not None:
            return None
        return cls(pool.connection_class, dict(pool.connection_kwargs))

    def command(self, *args: str | int) -> Any:
        if self._pid != os.getpid():  # connections are never shared across a fork
            self._idle, self._pid = [], os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._class(**self._options)
        else:
            try:
                stale = connection.can_read(0)  # closed by the server, or a stray reply
            except self._outages:
                stale = True
            if stale:
                connection.disconnect()
        try:
            connection.send_command(*args)
            reply = connection.read_response()
        except self._error_reply:  # read whole: the connection is fine
            self._idle.append(connection)
            raise
        except BaseException:  # a reply may be left unread: never lend it again
            connection.disconnect()
            raise
        if len(self._idle) < IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.disconnect()
        return reply

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.disconnect()


def _room_of(channel: str) -> str:
    return channel.split("{", 1)[1].split("}", 1)[0]


class ShardWatch:
    """The watcher's view of a cluster: one connection per node, subscribed with
    SSUBSCRIBE to the `changed` channels of the watched rooms whose slots that
    node owns, all waited on at once. The watcher thread uses it; `close` may
    come from another thread while the watcher waits, so everything but the
    wait itself runs under `_lock`, and a closed watch reports nothing.

    A room is subscribed before it is first reported (so nothing written after
    the report goes unseen) and reported again whenever its subscription is
    lost: a node gone or failed over, or a slot moved away (the node then
    unsubscribes it). Listeners read what they missed from the stream, so a
    report too many costs one read and a lost connection loses no message.
    Connections: one per node; channels: one per watched room."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._outages = _outages()
        self._lock = threading.Lock()
        self._closed = False
        self._nodes: dict[str, Any] = {}  # node name -> its subscribed connection
        self._rooms: dict[str, str] = {}  # watched room -> node name

    def wait(self, roomids: Collection[str], timeout: float) -> set[str]:
        with self._lock:
            if self._closed:
                return set()
            changed, ready, fds = self._look(roomids)
        if changed is not None:
            return changed
        if not ready and fds:  # wait without the lock: `close` may come meanwhile
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            ready = [fds[fd] for fd, _ in poller.poll(max(int(timeout * 1000), 1))]
        elif not ready:
            time.sleep(timeout)
        with self._lock:
            if self._closed:
                return set()
            try:
                return self._read(ready)
            except self._outages as exc:
                raise StoreUnavailable() from exc

    def _look(self, roomids: Collection[str]) -> tuple[set[str] | None, list[str], dict[int, str]]:
        """Subscribe and unsubscribe as `roomids` asks: rooms just subscribed are
        reported at once (changed is not None). Otherwise the nodes with
        something to read now, or the sockets to wait on. Caller holds `_lock`."""
        wanted = set(roomids)
        for roomid in set(self._rooms) - wanted:
            self._unsubscribe(roomid)
        fresh = wanted - set(self._rooms)
        changed: set[str] = set()
        if fresh:
            try:
                changed |= self._subscribe(fresh)
            except self._outages as exc:
                raise StoreUnavailable() from exc
            return changed | fresh, [], {}
        try:
            return None, *self._ready()
        except self._outages as exc:
            raise StoreUnavailable() from exc

    def _subscribe(self, roomids: set[str]) -> set[str]:
        """Subscribe on each room's node, and wait for each node's confirmation."""
        by_node: dict[str, list[str]] = {}
        for roomid in roomids:
            node = self.client.get_node_from_key(_key(roomid, "changed"))
            by_node.setdefault(node.name, []).append(roomid)
        changed: set[str] = set()
        for name, rooms in by_node.items():
            connection = self._connection(name)
            try:
                for roomid in rooms:  # one channel a command: each its own slot
                    connection.send_command("SSUBSCRIBE", _key(roomid, "changed"))
                confirmed = 0
                while confirmed < len(rooms):
                    reply = list(connection.read_response(push_request=True))
                    if isinstance(reply, list) and reply[0] == "ssubscribe":
                        confirmed += 1
                        self._rooms[_room_of(reply[1])] = name
                    else:
                        changed |= self._handle(name, reply)
            except self._error_types() as exc:
                self._drop(name)
                self._refresh()
                if not isinstance(exc, self._outages):
                    raise StoreUnavailable() from exc  # MOVED: the slot went elsewhere
                raise
        return changed

    def _error_types(self) -> tuple[type[Exception], ...]:
        from redis.exceptions import ResponseError

        return (*self._outages, ResponseError)

    def _connection(self, name: str) -> Any:
        connection = self._nodes.get(name)
        if connection is None:
            node = self.client.get_node(node_name=name)
            connection = node.redis_connection.connection_pool.make_connection()
            connection.connect()
            self._nodes[name] = connection
        return connection

    def _unsubscribe(self, roomid: str) -> None:
        name = self._rooms.pop(roomid)
        connection = self._nodes.get(name)
        if connection is None:
            return
        try:  # its confirmation is read, and passed over, with later replies
            connection.send_command("SUNSUBSCRIBE", _key(roomid, "changed"))
        except self._outages:
            self._drop(name)

    def _read(self, ready: list[str]) -> set[str]:
        """What the `ready` nodes announce; the rooms of a node whose connection
        fails are reported, and subscribed again on the next call."""
        changed: set[str] = set()
        for name in ready:
            connection = self._nodes.get(name)
            if connection is None:
                continue
            try:
                while connection._sock is None or connection.can_read(0):
                    changed |= self._handle(name, connection.read_response(push_request=True))
            except self._error_types():
                changed |= self._drop(name)
                self._refresh()
        return changed

    def _ready(self) -> tuple[list[str], dict[int, str]]:
        """Nodes with something to read now, and every node's socket to wait on
        otherwise (`select.poll` is gevent's when gevent patched it, so the
        wait lets other greenlets run)."""
        fds: dict[int, str] = {}
        ready = []
        for name, connection in self._nodes.items():
            sock = connection._sock
            if sock is None:
                ready.append(name)  # closed: reading it tells what became of it
                continue
            fds[sock.fileno()] = name
            try:
                if connection.can_read(0):
                    ready.append(name)
            except self._outages:
                ready.append(name)
        return ready, fds

    def _handle(self, name: str, reply: Any) -> set[str]:
        """One push from a node: an announcement, or a room the node let go."""
        if isinstance(reply, list | tuple):  # hiredis's push type is a list of its own
            reply = list(reply)
        if not isinstance(reply, list) or len(reply) < 2:
            return set()
        kind, roomid = reply[0], _room_of(str(reply[1]))
        if kind == "smessage":
            return {roomid}
        if kind == "sunsubscribe" and self._rooms.get(roomid) == name:
            del self._rooms[roomid]  # the slot moved: subscribe on its new node
            return {roomid}
        return set()

    def _drop(self, name: str) -> set[str]:
        """Forget a node's connection; its rooms are watched afresh."""
        connection = self._nodes.pop(name, None)
        if connection is not None:
            connection.disconnect()
        lost = {roomid for roomid, node in self._rooms.items() if node == name}
        for roomid in lost:
            del self._rooms[roomid]
        return lost

    def _refresh(self) -> None:
        with contextlib.suppress(Exception):  # no node answers yet: the next call tries again
            self.client.nodes_manager.initialize()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for name in list(self._nodes):
                self._drop(name)


class RedisBackend:
    """Thread- and gevent-safe: redis-py's connection pool, or `Connections` for
    the hot commands, hands each caller its own connection. Lost connections
    and refused writes surface as `StoreUnavailable` (503); connections are made
    again on the next call."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        min_replicas: int = 0,
        wait_ms: int = 500,
    ) -> None:
        if client is None:
            import redis

            url, own = _own_parameters(url or "redis://127.0.0.1:6379/0")
            min_replicas = own.get("min_replicas", min_replicas)
            wait_ms = own.get("wait_ms", wait_ms)
            common: dict[str, Any] = {
                "decode_responses": True,
                "socket_connect_timeout": 2,
                "socket_timeout": 5,
            }
            if url.startswith(CLUSTER_SCHEMES):
                try:
                    client = _cluster_client(url, **common)
                except (
                    redis.exceptions.RedisError,
                    redis.exceptions.RedisClusterException,
                ) as error:
                    if _refused_credentials(error):
                        raise ValueError(REFUSED_CREDENTIALS) from None
                    cause = error.__cause__ or error
                    raise ValueError(f"no node of the Redis Cluster answers ({cause})") from None
            else:
                options: dict[str, Any] = {}
                if url.startswith("redis://"):  # TLS and Unix sockets keep their own classes
                    options["connection_class"] = _connection_class()
                client = redis.Redis.from_url(url, health_check_interval=30, **common, **options)
        # redis-py's own annotations cover bytes and str replies alike; with
        # decode_responses every reply here is str, so the client is kept untyped.
        self.client: Any = client
        from redis.cluster import RedisCluster
        from redis.exceptions import ResponseError

        self.cluster = isinstance(client, RedisCluster)
        self.min_replicas, self.wait_ms = min_replicas, wait_ms
        self._outages = _outages()
        self._error_reply = ResponseError
        self._append_script = client.register_script(APPEND_SCRIPT)
        self._append_sha = self._append_script.sha
        self._add_user_script = client.register_script(ADD_USER_SCRIPT)
        self._delete_script = client.register_script(DELETE_SCRIPT)
        direct = os.environ.get("FLASKCHAT_REDIS_DIRECT", "1") != "0"
        self._connections = Connections.of(client) if direct else None
        # Newest stream id this process has seen per watched room.
        self._watched: dict[str, str] = {}
        self._shards = ShardWatch(client) if self.cluster else None

    def _call(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except self._outages as exc:
            _check_auth(exc)
            self._refresh_topology()
            raise StoreUnavailable() from exc
        except self._error_reply as exc:
            _check_auth(exc)
            if _refuses_writes(exc):
                raise StoreUnavailable() from exc
            raise

    def _refresh_topology(self) -> None:
        """After an error on a cluster, learn again which node owns which slot:
        a master may have failed over, or a slot moved."""
        if self.cluster:
            with contextlib.suppress(Exception):  # no node answers: the next command tries again
                self.client.nodes_manager.initialize()

    def _write(self, key: str, action: Callable[[Any], T]) -> T:
        """Run `action` on a client for the node holding `key` and, when
        `min_replicas` asks, confirm with `WAIT` on the same connection (WAIT
        counts the writes of its own connection) that enough replicas hold it.
        Every write of what must outlive a master goes through here."""
        if self.min_replicas <= 0:
            return self._call(lambda: action(self.client))

        def write_and_wait() -> T:
            import redis

            if self.cluster:  # the node's own client: WAIT goes where the write went
                pool = self.client.get_node_from_key(key).redis_connection.connection_pool
            else:
                pool = self.client.connection_pool
            pinned: Any = redis.Redis(connection_pool=pool, single_connection_client=True)
            try:
                result = action(pinned)
                acknowledged = int(pinned.execute_command("WAIT", self.min_replicas, self.wait_ms))
            finally:
                pinned.close()
            if acknowledged < self.min_replicas:
                raise StoreUnavailable(
                    "The chat store could not copy this to enough replicas in time."
                    " Please try again shortly."
                )
            return result

        return self._call(write_and_wait)

    def _announce(self, roomid: str) -> None:
        """Tell the watchers of a cluster that the room's stream has a new entry."""
        if self.cluster:
            channel = _key(roomid, "changed")
            node = self.client.get_node_from_key(channel)
            self._call(
                lambda: self.client.execute_command("SPUBLISH", channel, "1", target_nodes=node)
            )

    def _command(self, *args: str | int) -> Any:
        """One command of the hot paths (polls, posts, history), on `Connections`
        when the client allows it. Its replies are raw where the client's are
        shaped by redis-py; the commands sent here read the same either way
        (`_message` takes stream fields in both forms)."""
        connections = self._connections
        if connections is None:
            return self._call(lambda: self.client.execute_command(*args))
        return self._call(lambda: connections.command(*args))

    def create_room(self, roomid: str, alias: str, owner_digest: str = "") -> bool:
        """Three writes, in two slots on a cluster: each is waited for on its node."""
        room, rooms = _key(roomid, "room"), f"{PREFIX}:rooms"
        if self._call(lambda: self.client.sismember(REMOVED, roomid)):
            return False

        def claim(db: Any) -> bool:
            if not db.hsetnx(room, "alias", alias):
                return False
            db.hset(room, mapping={"owner": owner_digest})
            return True

        if not self._write(room, claim):
            return False
        self._write(rooms, lambda db: db.sadd(rooms, roomid))
        return True

    def room_settings(self, roomid: str) -> RoomSettings:
        def read() -> RoomSettings:
            owner, registration, retention = self.client.hmget(
                _key(roomid, "room"), "owner", "registration", "retention"
            )
            banned = self.client.hgetall(_key(roomid, "bans"))
            return RoomSettings(
                owner or "",
                registration != "0",
                int(retention) if retention else None,
                dict(sorted(banned.items())),
            )

        return self._call(read)

    def update_settings(
        self,
        roomid: str,
        *,
        owner_digest: str | None = None,
        registration_open: bool | None = None,
        retention_days: int | Unset | None = UNSET,
    ) -> None:
        changes: dict[str, str] = {}
        if owner_digest is not None:
            changes["owner"] = owner_digest
        if registration_open is not None:
            changes["registration"] = "1" if registration_open else "0"
        if not isinstance(retention_days, Unset):
            changes["retention"] = "" if retention_days is None else str(retention_days)
        if changes:
            room = _key(roomid, "room")
            self._write(room, lambda db: db.hset(room, mapping=changes))

    def set_ban(self, roomid: str, key: str, username: str | None) -> bool:
        bans = _key(roomid, "bans")
        if username is None:
            return bool(self._write(bans, lambda db: db.hdel(bans, key)))
        return bool(self._write(bans, lambda db: db.hsetnx(bans, key, username)))

    def room_alias(self, roomid: str) -> str | None:
        alias: str | None = self._call(lambda: self.client.hget(_key(roomid, "room"), "alias"))
        return alias

    def add_user(self, roomid: str, key: str, user: UserRecord, max_users: int) -> AddedUser:
        record = json.dumps({"username": user.username, "password_hash": user.password_hash})
        keys = [_key(roomid, "users")]
        outcome = self._write(
            keys[0], lambda db: self._add_user_script(keys, [key, record, max_users], client=db)
        )
        return AddedUser(outcome)

    def get_user(self, roomid: str, key: str) -> UserRecord | None:
        record = self._call(lambda: self.client.hget(_key(roomid, "users"), key))
        if record is None:
            return None
        data = json.loads(record)
        return UserRecord(data["username"], data["password_hash"])

    def count_users(self, roomid: str) -> int:
        return int(self._call(lambda: self.client.hlen(_key(roomid, "users"))))

    def add_token(self, roomid: str, key: str, digest: str, keep: int) -> None:
        tokens = _key(roomid, "tokens", key)

        def add(db: Any) -> None:
            pipe = db.pipeline()
            pipe.zadd(tokens, {digest: time.time()})
            pipe.zremrangebyrank(tokens, 0, -keep - 1)
            pipe.execute()

        self._write(tokens, add)

    def token_digests(self, roomid: str, key: str) -> list[str]:
        return list(self._command("ZRANGE", _key(roomid, "tokens", key), 0, -1))

    def remove_tokens(self, roomid: str, key: str) -> None:
        tokens = _key(roomid, "tokens", key)
        self._write(tokens, lambda db: db.delete(tokens))

    def remove_token(self, roomid: str, key: str, digest: str) -> bool:
        tokens = _key(roomid, "tokens", key)
        return bool(self._write(tokens, lambda db: db.zrem(tokens, digest)))

    def append_message(
        self,
        roomid: str,
        key: str,
        username: str,
        text: str,
        posted_at: datetime,
        client_id: str | None,
    ) -> tuple[StoredMessage, bool]:
        field = "" if client_id is None else f"{key} {client_id}"
        keys = [_key(roomid, "messages"), _key(roomid, "client_ids")]
        if self.min_replicas > 0:
            args = [field, username, text]
            reply = self._write(keys[0], lambda db: self._append_script(keys, args, client=db))
        else:
            reply = self._run_append(keys, [field, username, text])
        created, entry_id, stamp = reply
        self._announce(roomid)  # a retry too: the first one may not have got this far
        if created:
            written = EPOCH + int(stamp) * MICROSECOND
            return StoredMessage(str(entry_id), written, username, text), True
        [(first_id, fields)] = self._call(lambda: self.client.xrange(keys[0], entry_id, entry_id))
        return _message(first_id, fields), False

    def _run_append(self, keys: list[str], args: list[str]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return self._command("EVALSHA", self._append_sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed server: EVAL loads it again
            return self._command("EVAL", APPEND_SCRIPT, len(keys), *keys, *args)

    def append_event(
        self, roomid: str, kind: str, username: str = "", target: str | None = None
    ) -> StoredMessage:
        fields = {"k": kind, "u": username, "t": "", "us": _now_us()}
        if target is not None:
            fields["d"] = target
        messages = _key(roomid, "messages")
        entry_id = self._write(messages, lambda db: db.xadd(messages, fields))
        self._announce(roomid)
        return _message(str(entry_id), fields)

    def message_author(self, roomid: str, message_id: str) -> str | None:
        wanted = parse_stream_id(message_id)
        found = self._command("XRANGE", _key(roomid, "messages"), wanted, wanted)
        if not found:
            return None
        entry = _message(found[0][0], found[0][1])
        return entry.username.casefold() if entry.kind == "message" else None

    def delete_message(self, roomid: str, message_id: str) -> StoredMessage | None:
        wanted = parse_stream_id(message_id)
        keys = [_key(roomid, "messages")]
        done = self._write(keys[0], lambda db: self._delete_script(keys, [wanted], client=db))
        if not done:
            return None
        self._announce(roomid)
        entry_id, stamp = done
        return StoredMessage(
            str(entry_id), EPOCH + int(stamp) * MICROSECOND, "", "", DELETE, wanted
        )

    def purge_before(self, roomid: str, cutoff: datetime) -> int:
        """Entries are in order of their times too (a copied room keeps its
        order), so the old ones are those before the first one young enough."""
        messages = _key(roomid, "messages")
        cut_us = (cutoff - EPOCH) // MICROSECOND
        old: list[StoredMessage] = []
        while batch := self.events_after(roomid, old[-1].id if old else None, 500):
            young = [m for m in batch if (m.posted_at - EPOCH) // MICROSECOND >= cut_us]
            old += batch[: len(batch) - len(young)]
            if young:
                break
        for start in range(0, len(old), 500):
            ids = [m.id for m in old[start : start + 500]]
            self._write(messages, lambda db, ids=ids: db.xdel(messages, *ids))  # type: ignore[misc]
        if old:
            self.append_event(roomid, TRIM)
        return sum(m.kind == "message" for m in old)

    def recent_messages(self, roomid: str, limit: int) -> list[StoredMessage]:
        return self._visible_before(roomid, "+", limit)

    def messages_before(self, roomid: str, before: str, limit: int) -> list[StoredMessage]:
        cut = parse_stream_id(before)
        if cut == _FIRST_ID:  # nothing comes before the first id
            return []
        return self._visible_before(roomid, "(" + cut, limit)

    def _visible_before(self, roomid: str, end: str, limit: int) -> list[StoredMessage]:
        """The `limit` messages just before `end`, oldest first, passing over
        events (rare: a page seldom needs a second read)."""
        found: list[StoredMessage] = []
        while limit > 0 and len(found) < limit:
            count = limit - len(found)
            entries = self._command("XREVRANGE", _key(roomid, "messages"), end, "-", "COUNT", count)
            found += [m for m in (_message(i, f) for i, f in entries) if m.kind == "message"]
            if len(entries) < count:
                break
            end = "(" + entries[-1][0]
        return found[::-1]

    def messages_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        if after is not None:
            parse_stream_id(after)  # refused at once, whatever the limit
        found: list[StoredMessage] = []
        while len(found) < limit:
            count = limit - len(found)
            entries = self.events_after(roomid, after, count)
            found += [m for m in entries if m.kind == "message"]
            if len(entries) < count:
                break
            after = entries[-1].id
        return found

    def events_after(self, roomid: str, after: str | None, limit: int) -> list[StoredMessage]:
        start = "-" if after is None else "(" + parse_stream_id(after)
        if limit <= 0 or start == "(" + _LAST_ID:  # nothing comes after the last id
            return []
        entries = self._command("XRANGE", _key(roomid, "messages"), start, "+", "COUNT", limit)
        return [_message(i, f) for i, f in entries]

    def count_messages(self, roomid: str) -> int:
        count, cursor = 0, None
        while batch := self.messages_after(roomid, cursor, 1000):
            count, cursor = count + len(batch), batch[-1].id
        return count

    def latest_message_id(self, roomid: str) -> str | None:
        entries = self._command("XREVRANGE", _key(roomid, "messages"), "+", "-", "COUNT", 1)
        return str(entries[0][0]) if entries else None

    def wait_for_messages(self, roomids: Collection[str], timeout: float) -> set[str]:
        """A blocking XREAD over the watched rooms' streams, from the newest id this
        process has seen in each; a room watched for the first time counts as
        changed. Only the watcher thread calls it."""
        if self._shards is not None:
            return self._shards.wait(roomids, timeout)
        for roomid in set(self._watched) - set(roomids):
            del self._watched[roomid]
        fresh = {roomid for roomid in roomids if roomid not in self._watched}
        for roomid in fresh:
            self._watched[roomid] = self.latest_message_id(roomid) or "0-0"
        if fresh:  # what arrived before watching began: let listeners look once
            return fresh
        streams = {_key(r, "messages"): self._watched[r] for r in roomids}
        if not streams:
            time.sleep(timeout)
            return set()
        replies = self._call(lambda: self.client.xread(streams, block=max(int(timeout * 1000), 1)))
        changed = set()
        for stream_key, entries in replies or []:
            roomid = stream_key.split("{", 1)[1].split("}", 1)[0]
            self._watched[roomid] = entries[-1][0]
            changed.add(roomid)
        return changed

    def add_ticket(
        self, roomid: str, digest: str, username: str, expires_at: float, session: str
    ) -> None:
        lifetime_ms = max(int((expires_at - time.time()) * 1000), 1)
        key = _key(roomid, "ticket", digest)
        value = f"{expires_at} {session} {username}"
        self._call(lambda: self.client.set(key, value, px=lifetime_ms))

    def take_ticket(self, roomid: str, digest: str, now: float) -> tuple[str, str] | None:
        value = self._call(lambda: self.client.getdel(_key(roomid, "ticket", digest)))
        if value is None:
            return None
        expires_at, *session, username = value.split(" ")  # written without a session once
        return (username, "".join(session)) if float(expires_at) > now else None

    def set_presence(
        self, roomid: str, stream: str, username: str, expires_at: float, session: str
    ) -> None:
        key = _key(roomid, "presence")

        def update() -> None:
            pipe = self.client.pipeline()
            pipe.zadd(key, {f"{stream} {session} {username}": expires_at})
            pipe.zremrangebyscore(key, "-inf", time.time())
            pipe.execute()

        self._call(update)

    def renew_presence(
        self, roomid: str, streams: Sequence[tuple[str, str, str]], expires_at: float
    ) -> None:
        """`ZADD XX` moves only entries that are still there."""
        if not streams:
            return
        key = _key(roomid, "presence")
        members = {f"{stream} {session} {name}": expires_at for stream, name, session in streams}

        def update() -> None:
            pipe = self.client.pipeline()
            pipe.zadd(key, members, xx=True)
            pipe.zremrangebyscore(key, "-inf", time.time())
            pipe.execute()

        self._call(update)

    def end_presence(self, roomid: str, session: str) -> None:
        """A room's presence holds one entry per open stream: few enough to scan."""
        key = _key(roomid, "presence")

        def end() -> None:
            ended = [m for m in self.client.zrange(key, 0, -1) if m.split(" ")[1:-1] == [session]]
            if ended:
                self.client.zrem(key, *ended)

        self._call(end)

    def end_presence_of(self, roomid: str, username: str) -> None:
        key = _key(roomid, "presence")

        def end() -> None:
            members = self.client.zrange(key, 0, -1)
            ended = [m for m in members if m.rsplit(" ", 1)[1] == username]
            if ended:
                self.client.zrem(key, *ended)

        self._call(end)

    def online(self, roomid: str, now: float) -> list[str]:
        members = self._call(
            lambda: self.client.zrangebyscore(_key(roomid, "presence"), f"({now}", "+inf")
        )
        return sorted({member.rsplit(" ", 1)[1] for member in members})

    def room_ids(self) -> Iterator[str]:
        return iter(sorted(self._call(lambda: self.client.smembers(f"{PREFIX}:rooms"))))

    def dump_room(self, roomid: str) -> RoomDump:
        alias = self.room_alias(roomid)
        assert alias is not None
        dump = RoomDump(roomid=roomid, alias=alias, settings=self.room_settings(roomid))
        users: dict[str, str] = self._call(lambda: self.client.hgetall(_key(roomid, "users")))
        for key in sorted(users):
            data = json.loads(users[key])
            dump.users[key] = UserRecord(data["username"], data["password_hash"])
            dump.tokens[key] = self.token_digests(roomid, key)
        cursor: str | None = None
        while batch := self.messages_after(roomid, cursor, 1000):
            dump.messages.extend(batch)
            cursor = batch[-1].id
        return dump

    def delete_room(self, roomid: str) -> None:
        """A room's keys share one slot: on a cluster, only its node is scanned."""
        pattern, rooms = _key(roomid, "*"), f"{PREFIX}:rooms"

        def delete(db: Any) -> None:
            if self.cluster and db is self.client:  # the owning node's own client
                db = self.client.get_node_from_key(_key(roomid, "room")).redis_connection
            keys = list(db.scan_iter(match=pattern))
            if keys:
                db.delete(*keys)

        self._write(_key(roomid, "room"), delete)
        self._write(rooms, lambda db: db.srem(rooms, roomid))

    def remove_room(self, roomid: str) -> None:
        """Everything goes; the log is left holding a "gone" event for the
        listeners of other servers, and expires a minute later."""
        self.delete_room(roomid)
        messages = _key(roomid, "messages")
        self._write(REMOVED, lambda db: db.sadd(REMOVED, roomid))

        def leave_word(db: Any) -> None:
            pipe = db.pipeline()
            pipe.xadd(messages, {"k": GONE, "u": "", "t": "", "us": _now_us()})
            pipe.pexpire(messages, GONE_KEPT_MS)
            pipe.execute()

        self._write(messages, leave_word)
        self._announce(roomid)

    def restore_room(self, dump: RoomDump) -> None:
        rooms = f"{PREFIX}:rooms"

        def restore(db: Any) -> None:
            pipe = db.pipeline(transaction=False)
            settings = dump.settings
            pipe.hset(
                _key(dump.roomid, "room"),
                mapping={
                    "alias": dump.alias,
                    "owner": settings.owner_digest,
                    "registration": "1" if settings.registration_open else "0",
                    "retention": "" if settings.retention_days is None else settings.retention_days,
                },
            )
            if settings.banned:
                pipe.hset(_key(dump.roomid, "bans"), mapping=settings.banned)
            for key, user in dump.users.items():
                record = {"username": user.username, "password_hash": user.password_hash}
                pipe.hset(_key(dump.roomid, "users"), key, json.dumps(record))
                if dump.tokens.get(key):
                    ordered = {d: order for order, d in enumerate(dump.tokens[key])}
                    pipe.zadd(_key(dump.roomid, "tokens", key), ordered)
            for message in dump.messages:
                fields = {
                    "u": message.username,
                    "t": message.text,
                    "us": (message.posted_at - EPOCH) // MICROSECOND,
                }
                pipe.xadd(_key(dump.roomid, "messages"), fields)
            pipe.execute()

        self._write(_key(dump.roomid, "room"), restore)
        self._write(rooms, lambda db: db.sadd(rooms, dump.roomid))

    def ping(self) -> None:
        """A write with a short expiry, not a PING: a server that answers but
        refuses writes is not healthy. One command."""
        self._call(lambda: self.client.set(HEALTH_KEY, "ok", px=HEALTH_TTL_MS))

    def close(self) -> None:
        if self._connections is not None:
            self._connections.close()
        if self._shards is not None:
            self._shards.close()
        self.client.close()
