"""Calling Redis: its failures as the index's errors, and Lua scripts registered once.

The write scripts refuse a write with an error reply that names the rule it broke: ``REBUILDING`` (a
re-bucket runs), ``GENERATION`` (the writer's generation is no longer the active one) or ``CONFLICT <id>``
(the id is stored as the other modality). :func:`call` is the one place those replies become errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis

from index.errors import GenerationMovedError, ModalityConflictError, StoreUnavailableError

T = TypeVar("T")


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with Redis's failures raised as :class:`StoreUnavailableError`, a refused
    write as the error of the rule it broke."""
    try:
        return fn(*args, **kwargs)
    except redis.ResponseError as exc:
        if str(exc).startswith("CONFLICT "):
            item = str(exc).removeprefix("CONFLICT ")
            raise ModalityConflictError(f"id {item!r} is already stored as another modality") from exc
        if str(exc).startswith("REBUILDING"):
            raise StoreUnavailableError("the index is being re-bucketed: writes resume when it ends") from exc
        if str(exc).startswith("GENERATION"):
            raise GenerationMovedError("the index was re-bucketed meanwhile: nothing written, retry") from exc
        raise StoreUnavailableError(f"Redis refused the operation: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc


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
