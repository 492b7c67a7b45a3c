"""What a running service holds: settings, the bundle and its encoder, the index, and metrics.

Start-up order: load and verify the bundle (refuse to start on a bad one), connect to Redis, then
open the index (its FAISS structures rebuilt from Redis). Items are namespaced by the bundle id, so a
new bundle starts a new, empty index until items are re-ingested (see ``python -m index``).

Hot swap (``POST /v1/models:swap``): :meth:`Runtime.swap` loads and verifies another bundle and opens
its index while the current model keeps serving, then switches one reference (:class:`Model`). The
app pins the model current when a request starts (:meth:`Runtime.pinned`), so every read of
``bundle``/``encoder``/``index`` during that request sees the same model, even across a swap.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import redis

from index.engine import HashIndex
from index.errors import StoreUnavailableError
from service.encoder import Encoder
from service.metrics import Metrics
from service.settings import Settings
from training.bundle import Bundle, BundleError, load_bundle

log = logging.getLogger("xmhash.service")


@dataclass(frozen=True)
class Model:
    """The model in service: a verified bundle, its encoder and its index, replaced together."""

    bundle: Bundle
    encoder: Encoder
    index: HashIndex

    @classmethod
    def open(cls, settings: Settings, path: Path, client: redis.Redis) -> Model:
        """Load and verify a bundle (BundleError on a bad one), then open its index from Redis."""
        bundle = load_bundle(path, threads=1)
        encoder = Encoder(bundle, settings.max_text_chars, settings.max_image_bytes, settings.max_image_pixels)
        index = HashIndex.open(
            client, settings.index_name, bundle.bundle_id, bundle.bits, bundle.centers, bundle.centers_version
        )
        return cls(bundle, encoder, index)


_PINNED: ContextVar[tuple[Runtime, Model] | None] = ContextVar("xmhash_pinned_model", default=None)


@dataclass
class Runtime:
    settings: Settings
    current: Model
    metrics: Metrics
    api_key: str | None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _swapping: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        faiss.omp_set_num_threads(1)  # one query per request thread: OpenMP fan-out only adds overhead
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        model = Model.open(settings, settings.bundle_path, client)
        key = None if settings.demo else (settings.api_key.get_secret_value() if settings.api_key else None)
        runtime = cls(settings, model, Metrics(), key)
        threading.Thread(target=runtime._follow_generations, name="index-refresh", daemon=True).start()
        return runtime

    @property
    def model(self) -> Model:
        """The model of the request in progress (pinned when it started), else the current one."""
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
        serving; any failure (BundleError, …) leaves it in service. Swaps are serialised."""
        if Path(name).name != name or name in ("", ".") or ".." in name:
            raise BundleError(f"bundle name {name!r} must be a directory name inside the models directory")
        with self._swapping:
            model = Model.open(self.settings, self.settings.models_dir / name, self.current.index.store.client)
            previous, self.current = self.current, model
        log.info("model: now serving bundle %s (was %s)", model.bundle.bundle_id, previous.bundle.bundle_id)
        return previous, model

    def stop(self) -> None:
        self._stopping.set()

    def _follow_generations(self) -> None:
        """Pick up a re-bucketed generation (``python -m index rebucket``) without a restart."""
        while not self._stopping.wait(self.settings.refresh_seconds):
            try:
                if self.index.refresh():
                    log.info("index: now serving generation %s", self.index.stats()["generation"])
            except StoreUnavailableError as exc:
                log.warning("index: cannot check for a new generation: %s", exc)

    def authorised(self, presented: str | None) -> bool:
        """Write access: demo mode lets everyone in (it binds to 127.0.0.1); otherwise the API key,
        compared in constant time. A service with no key configured accepts no writes."""
        if self.settings.demo:
            return True
        if self.api_key is None or presented is None:
            return False
        return secrets.compare_digest(presented.encode(), self.api_key.encode())
