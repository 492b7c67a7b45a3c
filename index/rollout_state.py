"""The model rollout of an index, as every worker and host sees it: one Redis hash, ``xmh:{index}:rollout``.

A rollout pairs the bundle in service (``live``) with one other bundle (``other``) whose index is kept
beside it: while ``purpose`` is ``prepare``, the other index is being built from the live one
(``index.reencode``) and becomes ``ready`` when a pass completed; after a swap the previous bundle is kept
as the other one (``purpose`` ``rollback``, ``ready``), so swapping back finds every item. While a rollout
exists, every worker writes to both indexes (``service.model_rollout``). ``upgrade`` is the rollout a new
default bundle starts by itself: it serves at once, and the previous bundle's index, which no worker can
encode for any more, is the source it is filled from (deletes go to both, so none is revived).

The pass runs on one worker at a time: the one holding ``xmh:{index}:rollout:worker`` (a lease renewed
after each chunk, so a killed worker's lease lapses and a re-run, or another worker, resumes the pass).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis

from index.redis_calls import call
from index.redis_keys import IndexKeys

STATES = ("preparing", "ready", "failed")
PURPOSES = ("prepare", "rollback", "upgrade")


class RolloutConflict(ValueError):
    """Another rollout holds the index (one at a time: drop it, or wait for it)."""


@dataclass(frozen=True)
class Rollout:
    live: str  # bundle id in service
    live_path: str  # its bundle directory
    other: str  # bundle id of the index kept beside it
    other_path: str  # its bundle directory ('' for an upgrade's source: no worker loads it)
    purpose: str
    state: str
    report: dict  # index.reencode.ReencodeReport.as_json() of the last pass ({} before the first chunk)
    error: str = ""

    def beside(self, serving: str) -> tuple[str, str] | None:
        """(bundle id, directory) of the index a worker serving bundle ``serving`` writes beside its own:
        the other one of the pair (a worker that has not followed a swap yet writes to the new live one);
        None when the rollout does not concern it. An upgrade's source directory is '': deletes only."""
        if self.state == "failed" or serving not in (self.live, self.other):
            return None
        return (self.other, self.other_path) if serving == self.live else (self.live, self.live_path)

    def as_json(self) -> dict:
        return asdict(self)


class RolloutState:
    """The rollout record of one index, and the lease of the worker running its pass."""

    def __init__(self, client: redis.Redis, index_name: str, lease_seconds: int = 30) -> None:
        """``lease_seconds``: a pass not renewed for this long is taken over by the next worker that asks."""
        self.client = client
        self.key = IndexKeys(index_name).rollout
        self.lease_key = self.key + ":worker"
        self.lease_seconds = lease_seconds

    def read(self) -> Rollout | None:
        raw = call(self.client.hgetall, self.key)
        if not raw:
            return None
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        fields.pop("updated", None)
        return Rollout(**{**fields, "report": json.loads(fields.get("report") or "{}")})

    def begin(self, rollout: Rollout) -> Rollout:
        """Record a rollout, or return the one already recorded for the same bundles (a re-run resumes it);
        RolloutConflict when another one holds the index."""
        current = self.read()
        if current is not None and (current.live, current.other, current.purpose) != (
            rollout.live,
            rollout.other,
            rollout.purpose,
        ):
            raise RolloutConflict(
                f"bundle {current.other} is kept beside {current.live} ({current.purpose}, {current.state}): "
                "drop it first (POST /v1/models:drop)"
            )
        if current is not None and current.state != "failed":
            return current
        self._write(rollout)
        return rollout

    def update(self, rollout: Rollout) -> None:
        """Record a rollout whole, in one command: its progress or end state, or the pair turned around by
        a swap (a worker reading it meanwhile sees the old record or the new, never none)."""
        self._write(rollout)

    def clear(self) -> None:
        call(self.client.delete, self.key, self.lease_key)

    def _write(self, rollout: Rollout) -> None:
        mapping = {**rollout.as_json(), "report": json.dumps(rollout.report), "updated": time.time()}
        call(self.client.hset, self.key, mapping=mapping)

    def take_lease(self, holder: str) -> bool:
        """True when ``holder`` now runs the pass: the lease was free, lapsed or already its own."""
        if call(self.client.set, self.lease_key, holder, nx=True, ex=self.lease_seconds):
            return True
        return self.renew_lease(holder)

    def renew_lease(self, holder: str) -> bool:
        """Extend the lease if ``holder`` still has it (a pass that lost it stops)."""
        current = call(self.client.get, self.lease_key)
        if current is None or current.decode() != holder:
            return False
        return bool(call(self.client.set, self.lease_key, holder, xx=True, ex=self.lease_seconds))

    def release_lease(self, holder: str) -> None:
        if self.renew_lease(holder):
            call(self.client.delete, self.lease_key)
