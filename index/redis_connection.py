"""Connecting to Redis, the one place a client is made: one node, the primary Sentinel names, or a Redis Cluster.

Every entry point (the service, its collection loader, ``python -m index``) describes its Redis as a
:class:`RedisTarget` and calls :func:`connect`, so a topology is added here once. In Sentinel mode the
client is redis-py's own ``Sentinel(...).master_for(...)``: each new connection asks the sentinels for the
current primary, and a connection to a demoted primary is dropped, so a failover is followed without a
restart and without routing of our own. ``redis+cluster://host:port[,host:port…]`` names some nodes of a
cluster; redis-py's ``RedisCluster`` discovers the rest, routes each command by its key's slot and follows
MOVED/ASK redirections and failovers. One exception, :func:`on_node`: what must run on one connection (a
write followed by ``WAIT``, which counts that connection's writes; a ``WATCH``/``MULTI``/``EXEC``) runs on
the node redis-py says holds the key.

A client made here also carries its write acknowledgement (:class:`Acknowledged`): how many replicas must
confirm a write (``WAIT``) before the store acknowledges it; ``index.redis_calls`` applies it to every write,
on a cluster per shard, on the master holding the shard.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel

from index.errors import StoreUnavailableError

T = TypeVar("T")
DEFAULT_MASTER_NAME = "xmhash"
DEFAULT_WAIT_MS = 1000  # how long a write waits for its replicas before it is refused (a 503)
CLUSTER_SCHEME = "redis+cluster"
# A failed call is tried once more at once (a connection to a demoted primary is dropped and the next asks
# the sentinels), not 10 times with backoff as redis-py's default: a request waiting out an outage holds its
# worker (a search runs on the event loop), so it fails fast with a 503 and Retry-After instead. A cluster
# client keeps redis-py's own retries: they are what follows a slot moving (MOVED/ASK/TRYAGAIN).
_RETRY = Retry(NoBackoff(), 1)
# What a write on a node answers while its slot moves or its node fails over: redis-py's view is refreshed
# and the write tried again (ids are keys: a write that landed before the error is replaced, not doubled).
ROUTING_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError, redis.ConnectionError, redis.TimeoutError)
# What a call meets when no Redis answers it: a connection failing or timing out; on a cluster also no node
# reachable for redis-py's slot map (all of them down), a slot no master holds, or redirections that never
# settle (ClusterError: its retries ran out). Not a connection error to redis-py, so named here.
UNREACHABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, RedisClusterUnreachableError, SlotNotCoveredError,
                      ClusterError)  # fmt: skip
_NODE_ATTEMPTS = 20
_NODE_PAUSE_SECONDS = 0.25  # a replica's promotion takes a few node timeouts: 20 tries span about 5 s


class Acknowledged:
    """What a client made here carries: how many replicas must confirm a write before it is acknowledged
    (0: none, a single node's behaviour) and how long to wait for them."""

    wait_replicas: int = 0
    wait_ms: int = DEFAULT_WAIT_MS


class Client(Acknowledged, redis.Redis):
    """A client of one node (by URL, or the primary Sentinel names), carrying its acknowledgement."""


class ClusterClient(Acknowledged, RedisCluster):
    """A Redis Cluster client carrying its acknowledgement: each shard's write waits for the replicas of
    the master holding it."""


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: ``url`` (one node, or ``redis+cluster://`` nodes of a cluster), or ``sentinels``
    (host, port) watching ``master_name``; ``password`` for the data nodes and the sentinels alike.
    ``wait_replicas`` None: 1 with sentinels, 0 without."""

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
    return tuple(_addresses(text or "", "sentinel"))


def _addresses(text: str, what: str) -> list[tuple[str, int]]:
    found = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{what} address {part!r} is not host:port")
        found.append((host, int(port)))
    return found


def connect(
    target: RedisTarget, socket_timeout: float | None = None, connect_timeout: float | None = None
) -> Client | ClusterClient:
    """A client of the target's primary (of every master, for a cluster), carrying its write
    acknowledgement."""
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    client: Client | ClusterClient
    if target.sentinels:
        sentinel_options = {"password": target.password, **timeouts, "retry": _RETRY}
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options, **timeouts, retry=_RETRY)
        client = sentinel.master_for(target.master_name, redis_class=Client, password=target.password,
                                     **timeouts, retry=_RETRY)  # fmt: skip
    elif target.url and urlsplit(target.url).scheme == CLUSTER_SCHEME:
        nodes = [ClusterNode(host, port) for host, port in _addresses(urlsplit(target.url).netloc, "cluster node")]
        client = ClusterClient(startup_nodes=nodes, password=target.password, **timeouts)
    elif target.url:
        client = Client.from_url(target.url, password=target.password, **timeouts, retry=_RETRY)
    else:
        raise ValueError("a Redis target needs a URL or sentinels")
    client.wait_replicas, client.wait_ms = target.replicas, target.wait_ms
    return client


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def node_client(client: redis.Redis | RedisCluster, key: str) -> redis.Redis:
    """The client of the node holding ``key`` (``client`` itself on a plain Redis), as redis-py routes it."""
    if not is_cluster(client):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def refresh(client: redis.Redis | RedisCluster) -> None:
    """On a cluster, read the slot map again (which master holds which slot): after a node failed or a
    slot moved. Its failure (no node answering it either) is left to the next call to meet."""
    if is_cluster(client):
        with contextlib.suppress(*ROUTING_ERRORS, *UNREACHABLE_ERRORS):
            client.nodes_manager.initialize()


def on_node(client: redis.Redis | RedisCluster, key: str, work: Callable[[redis.Redis], T]) -> T:
    """``work(node_client)`` on the node holding ``key``: ``client`` itself on a plain Redis. On a cluster,
    a redirection or a failed node refreshes redis-py's slot map and the work runs again on the node it
    names, up to 20 times in about 5 s; ``work`` must be idempotent."""
    if not is_cluster(client):
        return work(client)
    for attempt in range(_NODE_ATTEMPTS):
        try:
            return work(node_client(client, key))
        except ROUTING_ERRORS:
            if attempt == _NODE_ATTEMPTS - 1:
                raise
            time.sleep(_NODE_PAUSE_SECONDS)
            refresh(client)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Primary:
    """The Redis primary a client talks to: its address and its replication id, which changes when a replica
    is promoted (or the server restarts), so a follower of the change feed knows to check continuity."""

    address: str
    replid: str


def primary(client: redis.Redis | RedisCluster, key: str | None = None) -> Primary:
    """The primary behind ``client`` (on a cluster, the master holding ``key``'s slot);
    :class:`StoreUnavailableError` when it cannot be reached or the server is a replica now (a failover under
    way: the client's connections are dropped, the next ask Sentinel or, on a cluster, the slot map is read
    again). Asked once, not retried: a search may be what asks."""
    try:
        node = client if key is None else node_client(client, key)
        info = node.info("replication")
    except (redis.RedisError, RedisClusterException) as exc:
        refresh(client)
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
    pool = node.connection_pool
    if info.get("role") != "master":
        pool.disconnect()
        refresh(client)
        raise StoreUnavailableError("the Redis server is a replica now: a failover is under way")
    address = getattr(pool, "master_address", None)
    if address is None:
        kwargs = pool.connection_kwargs
        address = (kwargs.get("host", "localhost"), kwargs.get("port", 6379))
    return Primary(f"{address[0]}:{address[1]}", str(info["master_replid"]))
