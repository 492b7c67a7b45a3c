"""Re-bucket an index: fit new centers on the stored codes and swap generations atomically.

1. Set ``…:rebuilding`` on every shard (shard 0's NX: one re-bucket at a time). Writes are refused from
   here on (a 503 the client retries), so no acknowledged write can miss the copy; reads go on from the old generation.
2. Read every item of the active generation, fit ``k`` centers on their head codes (alternating
   nearest-center assignment and bit-wise majority, ``index.centers``), and write centers and items
   (same ids, labels in the same order, metadata) into generation n + 1, whose change feed starts empty.
3. ``SET …:active n+1`` on every shard, shard 0's last: that one switches readers, once every shard is
   written; services pick it up with ``HashIndex.refresh``. The old
   generation is then dropped and the lock released (also on failure, leaving the old one active).

A new *bundle* is a new code space: its items live under its own bundle id and are re-encoded by
ingesting them again through the batch endpoint with that bundle serving.
"""

from __future__ import annotations

import hashlib

import numpy as np

from index.centers import fit_centers, head_signs, route
from index.errors import StoreUnavailableError
from index.store import RedisStore
from index.stored_values import MODALITIES

_BATCH = 2000  # items per copy script: each runs atomically, so a batch bounds how long Redis is blocked
_LOCK_SECONDS = 3600  # the rebuild flag expires after this, so a crashed re-bucket cannot block writes forever
CENTER_SAMPLE = 200_000  # most codes the centers are fitted on: bounds the fit's time and memory at any index size
_VERSION_HEX = 12  # hex digits of the centers' sha256 that name their version


def rebucket(store: RedisStore, bits: int, k: int, seed: int = 0, sample: int = CENTER_SAMPLE) -> dict:
    """Re-bucket the active generation of ``store``'s index into ``k`` buckets; returns a summary."""
    active = store.active_generation()
    if active is None:
        raise ValueError(f"no index at {store.bundle_keys.base}")
    if not store.set_rebuilding(_LOCK_SECONDS):
        raise StoreUnavailableError("another re-bucket of this index is running")
    try:
        old = store.at(active)
        stored = old.load_centers()
        if stored is None:
            raise ValueError(f"generation {active} of {store.bundle_keys.base} has no centers")
        head_bits = stored[0].shape[1]
        items = {m: old.items_in_order(m) for m in MODALITIES}
        heads = np.concatenate([head_signs(stored.codes, head_bits) for stored in items.values() if len(stored.codes)])
        rng = np.random.default_rng(seed)
        if len(heads) < k:
            raise ValueError(f"cannot fit {k} buckets on {len(heads)} items")
        chosen = heads[rng.choice(len(heads), size=min(sample, len(heads)), replace=False)]
        centers, _ = fit_centers(chosen, k, rng)
        version = hashlib.sha256(centers.tobytes()).hexdigest()[:_VERSION_HEX]
        new = store.at(active + 1)
        new.drop()  # leftovers of an interrupted re-bucket
        new.save_centers(centers, version)
        for modality, stored in items.items():
            buckets = route(stored.codes, centers)[:, 0] if len(stored.codes) else np.zeros(0, dtype=np.int64)
            for start in range(0, len(stored.ids), _BATCH):
                part = slice(start, start + _BATCH)
                new.copy(
                    modality,
                    stored.ids[part],
                    buckets[part],
                    stored.labels[part],
                    stored.codes[part],
                    stored.metadata[part],
                )
        new.activate()
        old.drop()
        return {"generation": active + 1, "buckets": k, "centers_version": version,
                "items": {m: len(stored.ids) for m, stored in items.items()}}  # fmt: skip
    finally:
        store.clear_rebuilding()
