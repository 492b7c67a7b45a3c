"""Prometheus metrics of the service (one registry per app, so tests can run several apps).

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, as ``python -m service`` does for
``XMHASH_WORKERS`` > 1), every worker writes its values to that directory and the exposition merges them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# a micro-batch's wait is bounded by its window (milliseconds) unless the encoder is busy
_WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "xmhash_request_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.encode = Histogram(
            "xmhash_encode_seconds", "time to encode a query into a code", ["modality", "input"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.search = Histogram(
            "xmhash_search_seconds", "time of the two-level index search", ["target"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ingested = Counter(
            "xmhash_items_ingested_total", "items stored through the batch endpoint", ["modality"],
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "xmhash_featurize_batch_size", "raw inputs featurized in one encoder call (micro-batch)", ["modality"],
            buckets=_BATCH_SIZES, registry=self.registry,
        )  # fmt: skip
        self.batch_wait = Histogram(
            "xmhash_featurize_queue_seconds", "a raw input's wait for its micro-batch's encoder call to start",
            ["modality"], buckets=_WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.index_items = Gauge(
            "xmhash_index_items", "items in the index", ["modality"], multiprocess_mode="mostrecent",
            registry=self.registry,
        )  # fmt: skip

    def batch_observer(self, modality: str) -> Callable[[int, Sequence[float]], None]:
        """What a micro-batcher of ``modality`` reports each batch to: its size and its items' waits."""
        size, wait = self.batch_size.labels(modality), self.batch_wait.labels(modality)

        def observe(items: int, waits: Sequence[float]) -> None:
            size.observe(items)
            for seconds in waits:
                wait.observe(seconds)

        return observe

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of all worker processes in multiprocess mode."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
