"""What a running service holds: settings, the bundle and its encoder, the index, and metrics.

Start-up order: load and verify the bundle (refuse to start on a bad one), connect to Redis, then
open the index (its FAISS structures rebuilt from Redis). Items are namespaced by the bundle id, so a
new bundle starts a new, empty index until items are re-ingested (see ``python -m index``).

Hot swap (``POST /v1/models:swap``): :meth:`Runtime.swap` loads and verifies another bundle and opens
its index while the current model keeps serving, then switches one reference (:class:`Model`). The
app pins the model current when a request starts (:meth:`Runtime.pinned`), so every read of
``bundle``/``encoder``/``index`` during that request sees the same model, even across a swap.

One service run may be several worker processes (``XMHASH_WORKERS``), each a Runtime with the index
in memory. Each model's index follows the change feed on a thread of its own (other workers' writes, a
re-bucketed generation: ``HashIndex.start_following``); the runtime's own thread follows a swap made
through another worker, which records the bundle serving this run in Redis
(``index.redis_keys``: ``xmh:{index}:run:{run_id}:bundle``).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import redis

from index.bundle import Bundle, BundleError, load_bundle
from index.engine import HashIndex
from index.errors import IndexInputError, StoreUnavailableError
from index.item_sources import SourceStore
from index.redis_calls import call
from index.redis_connection import connect
from index.redis_keys import IndexKeys
from index.rollout_state import RolloutState
from service.encoder import Batching, Encoder
from service.metrics import Metrics
from service.other_index import OtherIndex
from service.settings import Settings

log = logging.getLogger("xmhash.service")
_RUN_KEY_SECONDS = 24 * 3600  # run-scoped keys outlive a stopped run by this much
_REDIS_TIMEOUT_SECONDS = 5  # a Redis call that takes longer fails (a 503) instead of holding the request
_REDIS_CONNECT_SECONDS = 2  # an unreachable Redis fails start-up and writes fast
_RETRY_SECONDS = 1.0  # the swap watcher's pause after Redis failed


@dataclass(frozen=True)
class Model:
    """The model in service: a verified bundle, its encoder and its index, replaced together."""

    path: Path
    bundle: Bundle
    encoder: Encoder
    index: HashIndex

    @classmethod
    def open(cls, settings: Settings, path: Path, client: redis.Redis, metrics: Metrics) -> Model:
        """Load and verify a bundle (BundleError on a bad one), then open its index from Redis and start
        following its change feed."""
        bundle = load_bundle(path, threads=1)
        batching = Batching(settings.batch_window_ms / 1e3, settings.batch_max_items, metrics.batch_observer)
        encoder = Encoder(
            bundle, settings.max_text_chars, settings.max_image_bytes, settings.max_image_pixels, batching
        )
        try:
            index = HashIndex.open(client, settings.index_name, bundle.code_space, settings.shards)
        except Exception:
            encoder.close()
            raise
        index.start_following(settings.refresh_seconds)
        return cls(path.resolve(), bundle, encoder, index)

    def close(self) -> None:
        """Stop following the index's feed and the encoder's micro-batchers."""
        self.index.close()
        self.encoder.close()


def _run_key(settings: Settings, name: str) -> str:
    """A key shared by the worker processes of one run of the service."""
    return IndexKeys(settings.index_name).run(settings.run_id, name)


_PINNED: ContextVar[tuple[Runtime, Model] | None] = ContextVar("xmhash_pinned_model", default=None)


@dataclass
class Runtime:
    settings: Settings
    client: redis.Redis
    current: Model
    metrics: Metrics
    api_key: str | None
    other: OtherIndex | None = None  # the index kept beside the live one (a rollout), written with it
    _stopping: threading.Event = field(default_factory=threading.Event)
    _swapping: threading.RLock = field(default_factory=threading.RLock)  # a swap, and following one: one at a time

    @property
    def sources(self) -> SourceStore:
        """What re-encodes the API's items under another bundle."""
        return SourceStore(self.client, self.settings.index_name)

    @property
    def rollouts(self) -> RolloutState:
        return RolloutState(self.client, self.settings.index_name, self.settings.rollout_lease_seconds)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        """Open the model this run serves (the configured bundle, or the one a swap through another
        worker of the run chose) and start following the index."""
        faiss.omp_set_num_threads(1)  # one query per request thread: OpenMP fan-out only adds overhead
        client = connect(settings.redis_target(), _REDIS_TIMEOUT_SECONDS, _REDIS_CONNECT_SECONDS)
        serving = _run_key(settings, "bundle")
        try:
            client.set(serving, str(settings.bundle_path.resolve()), nx=True, ex=_RUN_KEY_SECONDS)
            path = Path(client.get(serving).decode())
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc
        metrics = Metrics()
        model = Model.open(settings, path, client, metrics)
        key = None if settings.demo else (settings.api_key.get_secret_value() if settings.api_key else None)
        runtime = cls(settings, client, model, metrics, key)
        runtime.follow_rollout()
        threading.Thread(target=runtime._watch_swaps, name="swap-watcher", daemon=True).start()
        return runtime

    def claim(self, task: str) -> bool:
        """True for exactly one worker of the run: the first to claim ``task`` (e.g. the demo ingestion)."""
        key = _run_key(self.settings, f"claim:{task}")
        return bool(self.client.set(key, os.getpid(), nx=True, ex=_RUN_KEY_SECONDS))

    @property
    def model(self) -> Model:
        """The model of the request in progress (pinned when it started), else the current one. A route
        reads it once and takes the encoder and the index from it."""
        pinned = _PINNED.get()
        return pinned[1] if pinned is not None and pinned[0] is self else self.current

    @property
    def bundle(self) -> Bundle:
        return self.model.bundle

    @property
    def encoder(self) -> Encoder:
        return self.model.encoder

    @property
    def index(self) -> HashIndex:
        return self.model.index

    @contextmanager
    def pinned(self) -> Iterator[Model]:
        """Serve one request with one model: the current one at entry, whatever a swap does meanwhile."""
        model = self.current
        token = _PINNED.set((self, model))
        try:
            yield model
        finally:
            _PINNED.reset(token)

    def swap(self, name: str) -> tuple[Model, Model]:
        """Serve the bundle directory ``name`` of ``settings.models_dir``; returns (previous, new)."""
        if Path(name).name != name or name in ("", ".") or ".." in name:
            raise BundleError(f"bundle name {name!r} must be a directory name inside the models directory")
        return self.serve(self.settings.models_dir / name)

    def serve(self, path: Path) -> tuple[Model, Model]:
        """Serve the bundle at ``path``; returns (previous, new).

        Loading, verifying and opening the index happen before the switch, with the current model
        serving; any failure (BundleError, …) leaves it in service. Swaps are serialised. The other
        workers of the run follow within ``refresh_seconds``."""
        with self._swapping:  # the run's record changes with the model: the watcher never reads it in between
            previous, model = self._serve(path)
            self.client.set(_run_key(self.settings, "bundle"), str(model.path), ex=_RUN_KEY_SECONDS)
        return previous, model

    @property
    def stopping(self) -> threading.Event:
        """Set when the service stops: background work (a rollout's pass) ends at its next step."""
        return self._stopping

    def _serve(self, path: Path) -> tuple[Model, Model]:
        """Open the model at ``path`` and switch to it; the previous index stops following the feed (a
        request still pinned to it searches its memory as it was)."""
        with self._swapping:
            model = Model.open(self.settings, path, self.client, self.metrics)
            previous, self.current = self.current, model
        previous.close()
        log.info("model: now serving bundle %s (was %s)", model.bundle.bundle_id, previous.bundle.bundle_id)
        return previous, model

    def stop(self) -> None:
        self._stopping.set()
        self.current.close()

    def _watch_swaps(self) -> None:
        """Every ``refresh_seconds``, serve the bundle recorded for this run if a swap through another
        worker changed it, and write to the index a rollout keeps beside it."""
        while not self._stopping.wait(self.settings.refresh_seconds):
            try:
                self._follow_swap()
                self.follow_rollout()
            except (redis.RedisError, StoreUnavailableError) as exc:
                log.warning("model: cannot read the bundle this run serves: %s", exc)
                self._stopping.wait(_RETRY_SECONDS)

    def _follow_swap(self) -> None:
        """Serve the bundle recorded for this run when a swap through another worker changed it (read and
        served under the swap lock, so a swap of this worker in progress is never undone)."""
        with self._swapping:
            recorded = call(self.client.getex, _run_key(self.settings, "bundle"), ex=_RUN_KEY_SECONDS)
            if recorded is None or Path(recorded.decode()) == self.current.path:
                return
            try:
                self._serve(Path(recorded.decode()))
            except (BundleError, IndexInputError) as exc:
                log.error("model: another worker swapped to %s, which does not load here: %s", recorded.decode(), exc)

    def follow_rollout(self) -> None:
        """Open (or drop) the writer of the index the recorded rollout keeps beside the one in service."""
        rollout = self.rollouts.read()
        beside = None if rollout is None else rollout.beside(self.current.bundle.bundle_id)
        if beside is None:
            self.other = None
            return
        bundle_id, path = beside
        if self.other is not None and self.other.bundle_id == bundle_id:
            return
        bundle = None
        if path:
            try:
                bundle = load_bundle(Path(path), threads=1)
            except BundleError as exc:
                log.error("rollout: bundle %s does not load here: %s", path, exc)
                return
        self.other = OtherIndex.open(self.client, self.settings.index_name, bundle_id, bundle)

    def authorised(self, presented: str | None) -> bool:
        """Write access: demo mode lets everyone in (it binds to 127.0.0.1); otherwise the API key,
        compared in constant time. A service with no key configured accepts no writes."""
        if self.settings.demo:
            return True
        if self.api_key is None or presented is None:
            return False
        return secrets.compare_digest(presented.encode(), self.api_key.encode())
