"""Connecting to Redis, the one place a client is made: one node by URL, or the primary Redis Sentinel names.

Every entry point (the service, its collection loader, ``python -m index``) describes its Redis as a
:class:`RedisTarget` and calls :func:`connect`, so a new topology (a later Redis Cluster) is added here
once. In Sentinel mode the client is redis-py's own ``Sentinel(...).master_for(...)``: each new connection
asks the sentinels for the current primary, and a connection to a demoted primary is dropped, so a
failover is followed without a restart and without routing of our own.

A client made here also carries its write acknowledgement (:class:`Client`): how many replicas must confirm
a write (``WAIT``) before the store acknowledges it; ``index.redis_calls`` applies it to every write.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from index.errors import StoreUnavailableError

DEFAULT_MASTER_NAME = "xmhash"
DEFAULT_WAIT_MS = 1000  # how long a write waits for its replicas before it is refused (a 503)
# A failed call is tried once more at once (a connection to a demoted primary is dropped and the next asks
# the sentinels), not 10 times with backoff as redis-py's default: a request waiting out an outage holds its
# worker (a search runs on the event loop), so it fails fast with a 503 and Retry-After instead.
_RETRY = Retry(NoBackoff(), 1)


class Client(redis.Redis):
    """A Redis client that knows how many replicas must confirm a write before it is acknowledged (0: none,
    a single node's behaviour) and how long to wait for them."""

    wait_replicas: int = 0
    wait_ms: int = DEFAULT_WAIT_MS


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: ``url`` (one node), or ``sentinels`` (host, port) watching ``master_name``;
    ``password`` for the data nodes and the sentinels alike. ``wait_replicas`` None: 1 with sentinels, 0
    without."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = DEFAULT_MASTER_NAME
    password: str | None = None
    wait_replicas: int | None = None
    wait_ms: int = DEFAULT_WAIT_MS

    @property
    def replicas(self) -> int:
        """Replicas a write must reach before it is acknowledged."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if self.sentinels else 0


def parse_sentinels(text: str | None) -> tuple[tuple[str, int], ...]:
    """``"host:port,host:port"`` → ((host, port), …); empty or None → ()."""
    found = []
    for part in filter(None, (piece.strip() for piece in (text or "").split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {part!r} is not host:port")
        found.append((host, int(port)))
    return tuple(found)


def connect(target: RedisTarget, socket_timeout: float | None = None, connect_timeout: float | None = None) -> Client:
    """A client of the target's primary, carrying its write acknowledgement."""
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout, "retry": _RETRY}
    if target.sentinels:
        sentinel_options = {"password": target.password, **timeouts}
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options, **timeouts)
        client = sentinel.master_for(target.master_name, redis_class=Client, password=target.password, **timeouts)
    elif target.url:
        client = Client.from_url(target.url, password=target.password, **timeouts)
    else:
        raise ValueError("a Redis target needs a URL or sentinels")
    client.wait_replicas, client.wait_ms = target.replicas, target.wait_ms
    return client


@dataclass(frozen=True)
class Primary:
    """The Redis primary a client talks to: its address and its replication id, which changes when a replica
    is promoted (or the server restarts), so a follower of the change feed knows to check continuity."""

    address: str
    replid: str


def primary(client: redis.Redis) -> Primary:
    """The primary behind ``client``; :class:`StoreUnavailableError` when it cannot be reached or the server
    is a replica now (a failover under way: the client's connections are dropped, the next ask Sentinel)."""
    try:
        info = client.info("replication")
    except redis.RedisError as exc:
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
    pool = client.connection_pool
    if info.get("role") != "master":
        pool.disconnect()
        raise StoreUnavailableError("the Redis server is a replica now: a failover is under way")
    address = getattr(pool, "master_address", None)
    if address is None:
        kwargs = pool.connection_kwargs
        address = (kwargs.get("host", "localhost"), kwargs.get("port", 6379))
    return Primary(f"{address[0]}:{address[1]}", str(info["master_replid"]))
