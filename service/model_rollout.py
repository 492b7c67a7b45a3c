"""Change the model without losing the corpus: build the new bundle's index beside the live one, swap
when it is complete and no worse, keep the previous one for rollback until dropped.

1. ``prepare``: record the rollout (``index.rollout_state``); every worker writes to both indexes from
   then on (``service.other_index``), and one worker runs the re-encoding pass (``index.reencode``) in
   the background, under a lease, so a pass killed with its worker is resumed by the next ``prepare``,
   or by any worker on start.
2. ``swap``: only once the pass completed (``ready``); a last pass re-encodes what arrived while workers
   were still learning of the rollout; the quality gate (``index.quality_gate``) compares the two
   bundles on the held-out set and refuses a worse one unless forced; then the rollout record turns
   around (the previous bundle is now the one kept, still written to) and the bundle in service
   switches, in this worker at once and in the others within ``refresh_seconds``.
3. ``rollback``: the same swap back to the kept bundle (no gate: an operator's way back).
   ``drop``: delete the kept index and end the rollout.

A service started with another bundle than the one last in service on its index (a new default after
an upgrade) serves it at once and fills its index from the previous one the same way (``upgrade``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from index.bulk_import import open_store
from index.bundle import Bundle, load_bundle
from index.quality_gate import GateResult, compare, held_out
from index.redis_calls import call
from index.redis_keys import IndexKeys
from index.reencode import Reencoder, SourceIndexMoved
from index.rollout_state import Rollout, RolloutConflict
from index.store import RedisStore
from service.runtime import Model, Runtime

log = logging.getLogger("xmhash.rollout")


class RolloutRefused(Exception):
    """An operation the rollout's state does not allow (an HTTP status, a message and what explains it)."""

    def __init__(self, status: int, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


@dataclass(frozen=True)
class Swapped:
    previous: Model
    model: Model
    gate: GateResult | None  # None when forced, a rollback, or no held-out set
    gate_note: str


def bundle_dir(rt: Runtime, name: str) -> Path:
    """A bundle directory of the models directory, by name (404 when absent)."""
    if Path(name).name != name or name in ("", ".") or ".." in name:
        raise RolloutRefused(422, f"bundle name {name!r} must be a directory name inside the models directory")
    path = rt.settings.models_dir / name
    if not path.is_dir():
        raise RolloutRefused(404, f"no bundle {name!r} in the models directory")
    return path.resolve()


def _active(rt: Runtime, bundle_id: str) -> RedisStore:
    return RedisStore(rt.client, rt.settings.index_name, bundle_id).active()


def prepare(rt: Runtime, name: str) -> Rollout:
    """Start (or resume) building bundle ``name``'s index beside the live one."""
    path = bundle_dir(rt, name)
    bundle = load_bundle(path, threads=1)
    live = rt.current.bundle
    if bundle.bundle_id == live.bundle_id:
        raise RolloutRefused(409, f"bundle {name!r} ({bundle.bundle_id}) is the one in service")
    wanted = Rollout(live.bundle_id, str(rt.current.path), bundle.bundle_id, str(path), "prepare", "preparing", {})
    try:
        rollout = rt.rollouts.begin(wanted)
    except RolloutConflict as exc:
        raise RolloutRefused(409, str(exc)) from exc
    open_store(rt.client, rt.settings.index_name, bundle)  # its index exists before any worker writes to it
    rt.follow_rollout()
    start_pass(rt)
    return rollout


def start_pass(rt: Runtime) -> threading.Thread:
    """Run the recorded rollout's pass on a thread of this worker once it holds the lease (``run_pass``)."""
    thread = threading.Thread(target=_pass_logging_failures, args=(rt,), name="rollout-pass", daemon=True)
    thread.start()
    return thread


def _pass_logging_failures(rt: Runtime) -> None:
    try:
        run_pass(rt)
    except Exception:
        log.exception("rollout: the re-encoding pass stopped")


def run_pass(rt: Runtime) -> Rollout | None:
    """The pass of the recorded rollout, on this thread, once this worker holds the lease (it waits while
    another live worker holds it, and takes over once that one's lease lapses); returns the record as the
    pass ends, None when there was nothing to run."""
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    rollouts = rt.rollouts
    while True:
        rollout = rollouts.read()
        if rollout is None or rollout.state != "preparing" or rt.stopping.is_set():
            return None
        if rollouts.take_lease(holder):
            break
        rt.stopping.wait(rollouts.lease_seconds / 3)
    stop = threading.Event()
    try:
        while True:
            try:
                report = _reencoder(rt, rollout).run(on_chunk=_progress(rt, rollout, holder, stop), stop=stop)
            except SourceIndexMoved:
                continue  # a re-bucket of the source: the next pass reads its new generation
            except Exception as exc:
                rollouts.update(dataclasses.replace(rollout, state="failed", error=str(exc)[:500]))
                raise
            if stop.is_set():
                return rollouts.read()
            done = dataclasses.replace(rollout, state="ready", report=report.as_json())
            rollouts.update(done)
            log.info("rollout: %s ready beside %s: %s", rollout.other, rollout.live, report.as_json())
            return done
    finally:
        rollouts.release_lease(holder)


def _reencoder(rt: Runtime, rollout: Rollout) -> Reencoder:
    """Prepare and rollback fill the other index from the live one; an upgrade fills the live one from the
    previous (``other``), whose bundle no worker has any more."""
    if rollout.purpose == "upgrade":
        bundle, source_id = rt.current.bundle, rollout.other
    else:
        bundle, source_id = load_bundle(Path(rollout.other_path), threads=1), rollout.live
    target = open_store(rt.client, rt.settings.index_name, bundle)
    settings = rt.settings
    return Reencoder(_active(rt, source_id), target, bundle, settings.rollout_chunk)


def _progress(rt: Runtime, rollout: Rollout, holder: str, stop: threading.Event):
    """After each chunk: record the progress, and stop when the service stops or another worker took the
    lease (this one was presumed dead)."""

    def on_chunk(report) -> None:
        rt.rollouts.update(dataclasses.replace(rollout, report=report.as_json()))
        if rt.stopping.is_set() or not rt.rollouts.renew_lease(holder):
            stop.set()

    return on_chunk


def swap(rt: Runtime, name: str, force: bool = False) -> Swapped:
    """Serve bundle ``name`` (see the module's steps); RolloutRefused says why not, with the gate's table."""
    return _swap_to(rt, bundle_dir(rt, name), force)


def _swap_to(rt: Runtime, path: Path, force: bool) -> Swapped:
    bundle = load_bundle(path, threads=1)
    live = rt.current
    rollout = rt.rollouts.read()
    if bundle.bundle_id == live.bundle.bundle_id:
        previous, model = rt.serve(path)  # the same bundle loaded again
        return Swapped(previous, model, None, "the bundle in service")
    kept = rollout is not None and (rollout.live, rollout.other) == (live.bundle.bundle_id, bundle.bundle_id)
    if kept and rollout.state != "ready":
        raise RolloutRefused(409, f"bundle {path.name!r} is not ready: its index is {rollout.state}",
                             rollout=rollout.as_json())  # fmt: skip
    if not kept and not force:
        raise RolloutRefused(
            409, f"bundle {path.name!r} has no index prepared: POST /v1/models:prepare first, or force"
        )
    if kept:
        _reencoder(rt, rollout).run()  # what arrived before every worker wrote to both
    gate, note = None, "forced" if force else "rollback: no gate"
    if not force and not (kept and rollout.purpose == "rollback"):
        gate, note = _gate(rt, live.bundle, bundle)
        if gate is not None and not gate.passed:
            raise RolloutRefused(409, f"bundle {path.name!r} is worse on {', '.join(gate.refused_by)}",
                                 gate=gate.as_json())  # fmt: skip
    kept_now = Rollout(bundle.bundle_id, str(path), live.bundle.bundle_id, str(live.path), "rollback", "ready", {})
    rt.rollouts.update(kept_now)  # one command: no worker reads "no rollout" and stops writing to both
    previous, model = rt.serve(path)
    call(rt.client.set, IndexKeys(rt.settings.index_name).live_bundle, bundle.bundle_id)
    rt.follow_rollout()
    return Swapped(previous, model, gate, note)


def _gate(rt: Runtime, live: Bundle, new: Bundle) -> tuple[GateResult | None, str]:
    evaluation = held_out(rt.client, rt.settings.index_name, rt.settings.gate_items)
    if evaluation is None:
        return None, "no held-out set: no loaded collection has rows of split 'query'"
    result = compare(live, new, evaluation, rt.settings.gate_max_drop)
    return result, "passed" if result.passed else "refused"


def rollback(rt: Runtime) -> Swapped:
    """Swap back to the bundle kept after the last swap."""
    rollout = rt.rollouts.read()
    if rollout is None or rollout.purpose != "rollback" or rollout.live != rt.current.bundle.bundle_id:
        raise RolloutRefused(409, "no previous bundle is kept for rollback")
    return _swap_to(rt, Path(rollout.other_path), force=False)


def drop(rt: Runtime) -> Rollout:
    """Delete the index kept beside the live one (every generation of it) and end the rollout."""
    rollout = rt.rollouts.read()
    if rollout is None or rollout.live != rt.current.bundle.bundle_id:
        raise RolloutRefused(409, "no index is kept beside the one in service")
    rt.rollouts.clear()
    RedisStore(rt.client, rt.settings.index_name, rollout.other).drop_bundle()
    rt.follow_rollout()
    return rollout


def resume(rt: Runtime) -> None:
    """On start: begin an upgrade when this service brings another bundle than the one last in service on
    the index, and resume a pass that a killed worker left (any worker may: the lease picks one)."""
    mine, path = rt.current.bundle.bundle_id, str(rt.current.path)
    key = IndexKeys(rt.settings.index_name).live_bundle
    previous = call(rt.client.get, key)
    if previous is not None and previous.decode() != mine and rt.rollouts.read() is None:
        before = _active(rt, previous.decode())
        if any(before.counts(modality) for modality in ("image", "text")):
            rt.rollouts.begin(Rollout(mine, path, previous.decode(), "", "upgrade", "preparing", {}))
            log.info("rollout: upgrading the index from bundle %s to %s", previous.decode(), mine)
    call(rt.client.set, key, mine)
    rt.follow_rollout()
    rollout = rt.rollouts.read()
    if rollout is not None and rollout.state == "preparing":
        start_pass(rt)
