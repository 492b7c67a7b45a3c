"""What a running service holds: settings, the bundle and its encoder, the index, and metrics.

Start-up order: load and verify the bundle (refuse to start on a bad one), connect to Redis, then
open the index (its FAISS structures rebuilt from Redis). Items are namespaced by the bundle id, so a
new bundle starts a new, empty index until items are re-ingested (see ``python -m index``).
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field

import faiss
import redis

from index.engine import HashIndex
from index.errors import StoreUnavailableError
from service.encoder import Encoder
from service.metrics import Metrics
from service.settings import Settings
from training.bundle import Bundle, load_bundle

log = logging.getLogger("xmhash.service")


@dataclass
class Runtime:
    settings: Settings
    bundle: Bundle
    encoder: Encoder
    index: HashIndex
    metrics: Metrics
    api_key: str | None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        faiss.omp_set_num_threads(1)  # one query per request thread: OpenMP fan-out only adds overhead
        bundle = load_bundle(settings.bundle_path, threads=1)
        encoder = Encoder(bundle, settings.max_text_chars, settings.max_image_bytes, settings.max_image_pixels)
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        index = HashIndex.open(
            client, settings.index_name, bundle.bundle_id, bundle.bits, bundle.centers, bundle.centers_version
        )
        key = None if settings.demo else (settings.api_key.get_secret_value() if settings.api_key else None)
        runtime = cls(settings, bundle, encoder, index, Metrics(), key)
        threading.Thread(target=runtime._follow_generations, name="index-refresh", daemon=True).start()
        return runtime

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
