"""Prometheus metrics of the service (one registry per app, so tests can run several apps).

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, as ``python -m service`` does for
``XMHASH_WORKERS`` > 1), every worker writes its values to that directory and the exposition merges them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from index.rollout_state import Rollout

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
        self.index_items = Gauge(
            "xmhash_index_items", "items in the index", ["modality"], multiprocess_mode="mostrecent",
            registry=self.registry,
        )  # fmt: skip

        self.rollout_items = Gauge(
            "xmhash_rollout_items", "the rollout's re-encoding pass: items of the source index, and done",
            ["bundle", "purpose", "state", "count"], multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip

    def show_rollout(self, rollout: Rollout | None) -> None:
        """The rollout's pass as gauges (none when there is no rollout)."""
        self.rollout_items.clear()
        if rollout is not None:
            labels = (rollout.other, rollout.purpose, rollout.state)
            for count in ("total", "done"):
                self.rollout_items.labels(*labels, count).set(rollout.report.get(count, 0))

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of all worker processes in multiprocess mode."""
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
