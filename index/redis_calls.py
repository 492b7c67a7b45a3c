"""Calling Redis: its failures as the index's errors, and Lua scripts registered once.

The write scripts refuse a write with an error reply that names the rule it broke: ``REBUILDING`` (a
re-bucket runs), ``GENERATION`` (the writer's generation is no longer the active one) or ``CONFLICT <id>``
(the id is stored as the other modality). :func:`call` is the one place those replies become errors.

A write is acknowledged once the replicas its client asks for (``index.redis_connection``'s ``Client``,
or ``ClusterClient``) confirm it: the script and ``WAIT`` go in one pipeline, on one connection, since
``WAIT`` counts the replicas that hold the writes of the connection that sends it (:meth:`LuaScript.write`,
:func:`confirm`); on a cluster, the connection of the master holding the script's keys, so each shard's
write waits for that master's replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from index.errors import GenerationMovedError, ModalityConflictError, NotReplicatedError, StoreUnavailableError
from index.redis_connection import UNREACHABLE_ERRORS, Acknowledged, on_node

T = TypeVar("T")


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with Redis's failures raised as :class:`StoreUnavailableError`, a refused
    write as the error of the rule it broke."""
    try:
        return fn(*args, **kwargs)
    except redis.ResponseError as exc:
        if str(exc).startswith("CONFLICT "):
            raise ModalityConflictError.of(str(exc).removeprefix("CONFLICT ")) from exc
        if str(exc).startswith("REBUILDING"):
            raise StoreUnavailableError("the index is being re-bucketed: writes resume when it ends") from exc
        if str(exc).startswith("GENERATION"):
            raise GenerationMovedError("the index was re-bucketed meanwhile: nothing written, retry") from exc
        raise StoreUnavailableError(f"Redis refused the operation: {exc}") from exc
    except UNREACHABLE_ERRORS as exc:
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc


def acknowledgement(client: redis.Redis) -> tuple[int, int]:
    """(replicas that must confirm a write, milliseconds to wait for them) of ``client``: (0, 0) for a
    client not made by ``index.redis_connection`` (a single node, nothing to wait for)."""
    if isinstance(client, Acknowledged):
        return client.wait_replicas, client.wait_ms
    return 0, 0


def confirm(confirmed: int, replicas: int, wait_ms: int) -> None:
    """Raise :class:`NotReplicatedError` when ``WAIT`` answered fewer replicas than a write needs."""
    if confirmed < replicas:
        raise NotReplicatedError(
            f"written on the Redis primary but confirmed by {confirmed} of the {replicas} replica(s) required "
            f"within {wait_ms} ms, so not acknowledged: retry (writes are idempotent by id)"
        )


class LuaScript:
    """A Lua script kept as a class attribute and registered with the first client that runs it, as
    redis-py's ``Lock`` keeps its own: its digest is computed once per process, not per store object, and
    every run is one ``EVALSHA`` (the script is loaded again only on a server that lacks it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._script: redis.commands.core.Script | None = None

    def __call__(self, client: redis.Redis, keys: Sequence, args: Sequence) -> Any:
        if self._script is None:
            self._script = client.register_script(self.source)
        return call(self._script, keys=keys, args=args, client=client)

    def write(self, client: redis.Redis, keys: Sequence, args: Sequence) -> Any:
        """Run a writing script; returns once the replicas ``client`` asks for confirm it (``WAIT`` in the
        same pipeline, on the node holding ``keys``: ``index.redis_connection.on_node``),
        :class:`NotReplicatedError` when fewer do in time."""
        replicas, wait_ms = acknowledgement(client)
        if not replicas:
            return self(client, keys, args)
        if self._script is None:
            self._script = client.register_script(self.source)
        sha = self._script.sha

        def written(node: redis.Redis) -> list:
            for attempt in range(2):  # a server that lacks the script (a promoted replica): loaded, then again
                pipe = node.pipeline(transaction=False)
                pipe.evalsha(sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", replicas, wait_ms)
                try:
                    return pipe.execute()
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
                    node.script_load(self.source)
            raise AssertionError("unreachable")

        result, confirmed = call(on_node, client, keys[0], written)
        confirm(confirmed, replicas, wait_ms)
        return result
