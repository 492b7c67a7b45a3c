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
from index.redis_keys import IndexKeys
from service.encoder import Batching, Encoder
from service.metrics import Metrics
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
            index = HashIndex.open(client, settings.index_name, bundle.code_space)
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
    _stopping: threading.Event = field(default_factory=threading.Event)
    _swapping: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        """Open the model this run serves (the configured bundle, or the one a swap through another
        worker of the run chose) and start following the index."""
        faiss.omp_set_num_threads(1)  # one query per request thread: OpenMP fan-out only adds overhead
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=_REDIS_TIMEOUT_SECONDS, socket_connect_timeout=_REDIS_CONNECT_SECONDS
        )
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
        """Serve the bundle directory ``name`` of ``settings.models_dir``; returns (previous, new).

        Loading, verifying and opening the index happen before the switch, with the current model
        serving; any failure (BundleError, …) leaves it in service. Swaps are serialised. The other
        workers of the run follow within ``refresh_seconds``."""
        if Path(name).name != name or name in ("", ".") or ".." in name:
            raise BundleError(f"bundle name {name!r} must be a directory name inside the models directory")
        previous, model = self._serve(self.settings.models_dir / name)
        self.client.set(_run_key(self.settings, "bundle"), str(model.path), ex=_RUN_KEY_SECONDS)
        return previous, model

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
        worker changed it."""
        while not self._stopping.wait(self.settings.refresh_seconds):
            try:
                self._follow_swap()
            except redis.RedisError as exc:
                log.warning("model: cannot read the bundle this run serves: %s", exc)
                self._stopping.wait(_RETRY_SECONDS)

    def _follow_swap(self) -> None:
        """Serve the bundle recorded for this run when a swap through another worker changed it."""
        recorded = self.client.getex(_run_key(self.settings, "bundle"), ex=_RUN_KEY_SECONDS)
        if recorded is None or Path(recorded.decode()) == self.current.path:
            return
        try:
            self._serve(Path(recorded.decode()))
        except (BundleError, IndexInputError) as exc:
            log.error("model: another worker swapped to %s, which does not load here: %s", recorded.decode(), exc)

    def authorised(self, presented: str | None) -> bool:
        """Write access: demo mode lets everyone in (it binds to 127.0.0.1); otherwise the API key,
        compared in constant time. A service with no key configured accepts no writes."""
        if self.settings.demo:
            return True
        if self.api_key is None or presented is None:
            return False
        return secrets.compare_digest(presented.encode(), self.api_key.encode())
