"""Prometheus metrics of the service (one registry per app, so tests can run several apps).

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, as ``python -m service`` does for
``XMHASH_WORKERS`` > 1), every worker writes its values to that directory and the exposition merges them:
histograms and counters are summed over the workers; a gauge of the index (every worker holds the same
items) is the value of the worker that set it last. The hash-health metrics: ``docs/metrics.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from index.hash_health import HashHealth
from index.rollout_state import Rollout

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_TIE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # a re-ranker widens its scan up to 4096
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
        self.batch_size = {
            "featurize": Histogram(
                "xmhash_featurize_batch_size", "raw inputs featurized in one encoder call (micro-batch)",
                ["modality"], buckets=_BATCH_SIZES, registry=self.registry,
            ),
            "hash": Histogram(
                "xmhash_hash_batch_size", "queries hashed in one hash function run (micro-batch)", ["modality"],
                buckets=_BATCH_SIZES, registry=self.registry,
            ),
        }  # fmt: skip
        self.batch_wait = {
            "featurize": Histogram(
                "xmhash_featurize_queue_seconds", "a raw input's wait for its micro-batch's encoder call to start",
                ["modality"], buckets=_WAIT_BUCKETS, registry=self.registry,
            ),
            "hash": Histogram(
                "xmhash_hash_queue_seconds", "a query's wait for its micro-batch's hash function run to start",
                ["modality"], buckets=_WAIT_BUCKETS, registry=self.registry,
            ),
        }  # fmt: skip
        self.index_items = Gauge(
            "xmhash_index_items", "items in the index", ["modality"], multiprocess_mode="mostrecent",
            registry=self.registry,
        )  # fmt: skip
        self.tie_groups = Histogram(
            "xmhash_search_tie_group_size", "candidates the scan ranked at the query's best Hamming distance",
            ["target"], buckets=_TIE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.bit_ones = Gauge(
            "xmhash_hash_bit_ones_fraction", "fraction of the stored codes whose bit is one", ["modality", "bit"],
            multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip
        self.bit_balance_worst = Gauge(
            "xmhash_hash_bit_balance_worst", "largest |fraction of ones - 0.5| over the bits (0.5: a constant bit)",
            ["modality"], multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip
        self.buckets_used = Gauge(
            "xmhash_hash_buckets_nonempty", "buckets holding at least one item", ["modality"],
            multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip
        self.bucket_skew = Gauge(
            "xmhash_hash_bucket_max_over_mean", "largest bucket / mean non-empty bucket (1: even)", ["modality"],
            multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip
        self.distinct = Gauge(
            "xmhash_hash_distinct_codes_ratio", "distinct codes / items (1: every item a code of its own)",
            ["modality"], multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip

        self.rollout_items = Gauge(
            "xmhash_rollout_items", "the rollout's re-encoding pass: items of the source index, and done",
            ["bundle", "purpose", "state", "count"], multiprocess_mode="mostrecent", registry=self.registry,
        )  # fmt: skip

    def observe_ties(self, target: str, sizes: np.ndarray) -> None:
        """Record each query's tie-group size (``HashIndex.search``'s ``on_ties``); a query that found
        nothing has no tie group, so it is left out rather than counted as 0."""
        tie_groups = self.tie_groups.labels(target)
        for size in sizes[sizes > 0].tolist():
            tie_groups.observe(size)

    def set_health(self, health: dict[str, HashHealth]) -> None:
        """Set the hash-health gauges of each modality (``HashIndex.health``)."""
        for modality, stats in health.items():
            for bit, ones in enumerate(stats.ones.tolist()):
                self.bit_ones.labels(modality, str(bit)).set(ones)
            self.bit_balance_worst.labels(modality).set(stats.worst_balance)
            self.buckets_used.labels(modality).set(stats.buckets_used)
            self.bucket_skew.labels(modality).set(stats.bucket_skew)
            self.distinct.labels(modality).set(stats.distinct)

    def show_rollout(self, rollout: Rollout | None) -> None:
        """The rollout's pass as gauges (none when there is no rollout)."""
        self.rollout_items.clear()
        if rollout is not None:
            labels = (rollout.other, rollout.purpose, rollout.state)
            for count in ("total", "done"):
                self.rollout_items.labels(*labels, count).set(rollout.report.get(count, 0))

    def batch_observer(self, stage: str, modality: str) -> Callable[[int, Sequence[float]], None]:
        """What a micro-batcher of ``stage`` (``featurize``, ``hash``) and ``modality`` reports each batch to:
        its size and its items' waits."""
        size, wait = self.batch_size[stage].labels(modality), self.batch_wait[stage].labels(modality)

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
