"""The Redis client of every entry point: a plain Redis, or a Redis Cluster for a ``redis+cluster://`` URL.

``redis+cluster://host:port[,host:port…]`` names some nodes of a cluster; redis-py's ``RedisCluster``
discovers the rest, routes each command by its key's slot and follows MOVED/ASK redirections and
failovers. One exception, :func:`on_node`: a write followed by ``WAIT`` must run both on one connection
(``WAIT`` counts that connection's writes), so it runs on the node redis-py says holds the key.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

T = TypeVar("T")
CLUSTER_SCHEME = "redis+cluster"
# What a write on a node answers while its slot moves or its node fails over: redis-py's view is refreshed
# and the write tried again (ids are keys: a write that landed before the error is replaced, not doubled).
ROUTING_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError, redis.ConnectionError, redis.TimeoutError)
_NODE_ATTEMPTS = 20
_NODE_PAUSE_SECONDS = 0.25  # a replica's promotion takes a few node timeouts: 20 tries span about 5 s


def connect(url: str, **options: Any) -> redis.Redis | RedisCluster:
    """The client for ``url``: ``redis://…`` (a plain Redis) or ``redis+cluster://h:p,h:p`` (a cluster).
    ``options`` (timeouts) go to the client either way."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return redis.Redis.from_url(url, **options)
    nodes = [ClusterNode(*_host_port(node)) for node in parts.netloc.split(",") if node]
    return RedisCluster(startup_nodes=nodes, **options)


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host, int(port)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def node_client(client: redis.Redis | RedisCluster, key: str) -> redis.Redis:
    """The client of the node holding ``key`` (``client`` itself on a plain Redis), as redis-py routes it."""
    if not is_cluster(client):
        return client
    return client.get_redis_connection(client.get_node_from_key(key))


def on_node(client: redis.Redis | RedisCluster, key: str, work: Callable[[redis.Redis], T]) -> T:
    """``work(node_client)`` on the node holding ``key``: ``client`` itself on a plain Redis. On a cluster,
    a redirection or a failed node refreshes redis-py's slot map (``nodes_manager.initialize``) and the
    work runs again on the node it names; ``work`` must be idempotent."""
    if not is_cluster(client):
        return work(client)
    for attempt in range(_NODE_ATTEMPTS):
        try:
            return work(node_client(client, key))
        except ROUTING_ERRORS:
            if attempt == _NODE_ATTEMPTS - 1:
                raise
            time.sleep(_NODE_PAUSE_SECONDS)
            with contextlib.suppress(*ROUTING_ERRORS):  # the next attempt fails again, or finds it settled
                client.nodes_manager.initialize()
    raise AssertionError("unreachable")
