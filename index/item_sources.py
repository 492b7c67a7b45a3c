"""What re-encoding an item under another bundle needs, kept beside the index but off the search path.

A code is a function of its bundle: a new model needs every item hashed again, from what it was made of.
Items loaded from a collection need nothing kept here: their metadata names the collection and the image
path inside it, and the collection's manifest (registered folder) holds the text. Items sent through the
API keep a *source* in the hash ``xmh:{index}:src:{modality}`` (id → msgpack map), written before the item
(an acknowledged item always has its source; a source left by a crash between the two is never read,
since re-encoding starts from the items):

- ``{"text": str}``: a raw text, which any bundle with a text featurizer can featurize again;
- ``{"space": str, "f16": bytes}``: a feature vector as float16 (half the bytes of float32), with the
  feature space it lives in (``Bundle.feature_space``). Raw images are kept this way, as their
  featurizer's output (2.5 KB for EfficientNet-Lite0's 1,280 numbers, whatever the image's size), and so
  are items sent as feature vectors. A bundle of another feature space cannot hash them: they are
  reported as not re-encodable by it.

Redis is the store, as for everything the service acknowledges (one durable store, shared by every
worker and host), in hashes that no search reads; docs/model_rollout.md gives the measured cost per item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np
import redis

from index.redis_calls import call
from index.redis_keys import IndexKeys
from index.stored_values import MODALITIES


@dataclass(frozen=True)
class TextSource:
    text: str


@dataclass(frozen=True)
class FeatureSource:
    space: str
    features: np.ndarray  # (d,) float16


Source = TextSource | FeatureSource


def features_source(space: str, features: np.ndarray) -> FeatureSource:
    """A feature vector kept as float16 (the stored form, so what is read back equals what was kept)."""
    assert features.ndim == 1, features.shape
    return FeatureSource(space, features.astype(np.float16))


def _packed(source: Source) -> bytes:
    if isinstance(source, TextSource):
        return msgpack.packb({"text": source.text})
    return msgpack.packb({"space": source.space, "f16": source.features.astype("<f2").tobytes()})


def _unpacked(raw: bytes) -> Source:
    value = msgpack.unpackb(raw)
    if "text" in value:
        return TextSource(value["text"])
    return FeatureSource(value["space"], np.frombuffer(value["f16"], dtype="<f2"))


class SourceStore:
    """The sources of one index's API items, by modality and id."""

    def __init__(self, client: redis.Redis, index_name: str) -> None:
        self.client = client
        self.keys = {modality: IndexKeys(index_name).sources(modality) for modality in MODALITIES}

    def put(self, modality: str, sources: Mapping[str, Source]) -> None:
        """Keep (or replace) the sources of these items, in one command."""
        if sources:
            call(self.client.hset, self.keys[modality], mapping={i: _packed(s) for i, s in sources.items()})

    def forget(self, modality: str, ids: Sequence[str]) -> None:
        """Drop sources: of items deleted, or replaced by an input that keeps none (nothing stale stays)."""
        if ids:
            call(self.client.hdel, self.keys[modality], *ids)

    def get(self, modality: str, ids: Sequence[str]) -> list[Source | None]:
        """Each id's source, None where none is kept (a collection item, or one stored before sources were)."""
        if not ids:
            return []
        raw = call(self.client.hmget, self.keys[modality], list(ids))
        return [None if value is None else _unpacked(value) for value in raw]

    def stored_bytes(self, modality: str) -> int:
        """Redis's own count of the memory the modality's sources take (``MEMORY USAGE``, all of the hash)."""
        return int(call(self.client.memory_usage, self.keys[modality], samples=0) or 0)
