"""Re-encode an index under another bundle: every item the source index holds (usually the one in service,
which keeps serving), hashed by the new bundle from its source and written into the new bundle's own index.

An item's source (``index.item_sources``): the text or feature vector kept for an API item, else, for an
item loaded from a collection, its image file and its text in the collection's manifest
(``index.collection_registry``). An item with neither, or whose features live in another feature space
than the new bundle's, is counted as not re-encodable, with the reason.

Resumable and safe beside live writes: each chunk asks the new index which ids it holds and re-encodes
only the others, and writes them with ``RedisStore.fill``, which in one script keeps only the ids that the
source index still holds and the new one does not. So an item the service deleted meanwhile is not
revived, an item it wrote to both indexes meanwhile (``service.model_rollout``) is not overwritten with
its older source, and a run killed at any point is completed by running it again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from index import collection_registry
from index.bulk_import import center_index
from index.bundle import Bundle
from index.bundle.featurizers import ImageDecodeError
from index.collection import ITEM_PREFIXES, CollectionError, read_collection
from index.item_sources import FeatureSource, SourceStore, TextSource
from index.store import Group, RedisStore
from index.stored_values import MODALITIES


class SourceIndexMoved(RuntimeError):
    """The source index was re-bucketed during the pass: its items now live in another generation."""


@dataclass
class ReencodeReport:
    """Items per modality: ``written`` by this run, ``present`` in the new index already (an earlier run,
    or the service writing to both), ``not_reencodable`` by reason; ``total`` the source index's items."""

    total: int = 0
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    present: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    not_reencodable: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.written.values()) + sum(self.present.values()) + sum(self.not_reencodable.values())

    def as_json(self) -> dict:
        return {"total": self.total, "done": self.done, "written": self.written, "present": self.present,
                "not_reencodable": self.not_reencodable}  # fmt: skip


@dataclass
class _Chunk:
    """One chunk's items that have a usable source, with their inputs by kind."""

    ids: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    rows: list[np.ndarray | str | None] = field(default_factory=list)  # features, text, or None for pixels
    pixels: list[np.ndarray] = field(default_factory=list)


class Reencoder:
    """Builds ``target`` (the new bundle's index) from ``source`` (another bundle's index of the same name)."""

    def __init__(self, source: RedisStore, target: RedisStore, bundle: Bundle, chunk: int = 256) -> None:
        """``chunk``: items re-encoded and written together (one featurizer batch, one script)."""
        assert source.index_name == target.index_name and source.bundle_id != target.bundle_id
        self.source, self.target, self.bundle = source, target, bundle
        self.kept = SourceStore(source.client, source.index_name)
        self.chunk = chunk
        self._texts: dict[str, dict[str, str] | None] = {}  # collection name → its texts by row id

    def run(
        self, on_chunk: Callable[[ReencodeReport], None] | None = None, stop: threading.Event | None = None
    ) -> ReencodeReport:
        """One pass over the source index, in label order; returns early (incomplete) when ``stop`` is set.
        Raises :class:`SourceIndexMoved` when the source index is re-bucketed meanwhile (run again)."""
        labels = {modality: self.source.codes_in_order(modality).labels for modality in MODALITIES}
        report = ReencodeReport(total=sum(len(found) for found in labels.values()))
        centers = center_index(self.target)
        for modality in MODALITIES:
            for start in range(0, len(labels[modality]), self.chunk):
                if stop is not None and stop.is_set():
                    return report
                if self.source.active_generation() != self.source.generation:
                    raise SourceIndexMoved(f"{self.source.bundle_keys.base} was re-bucketed during the re-encode")
                part = labels[modality][start : start + self.chunk].tolist()
                self._chunk(modality, part, centers, report)
                if on_chunk is not None:
                    on_chunk(report)
        return report

    def _chunk(self, modality: str, labels: list[int], centers, report: ReencodeReport) -> None:
        entries = [entry for entry in self.source.lookup(modality, labels) if entry is not None]  # None: gone since
        held = self.target.modalities_of([item for item, _ in entries])
        missing = [(item, meta) for item, meta in entries if held[item] is None]
        report.present[modality] += len(entries) - len(missing)
        chunk = _Chunk()
        sources = self.kept.get(modality, [item for item, _ in missing])
        for (item, meta), source in zip(missing, sources, strict=True):
            problem = self._add(chunk, modality, item, meta, source)
            if problem is not None:
                report.not_reencodable[problem] = report.not_reencodable.get(problem, 0) + 1
        if not chunk.ids:
            return
        codes = self.bundle.packed_codes(modality, self._features(modality, chunk))
        buckets = centers.route(codes, 1)[:, 0]
        report.written[modality] += self.target.fill(
            [Group(modality, chunk.ids, buckets, codes, chunk.metadata)], self.source
        )

    def _add(self, chunk: _Chunk, modality: str, item: str, meta: str, source) -> str | None:
        """Put an item's input in the chunk; or say why it cannot be re-encoded by this bundle."""
        if isinstance(source, FeatureSource):
            if source.space != self.bundle.feature_space(modality):
                return f"{modality} features of another feature space ({source.space})"
            row: np.ndarray | str | None = source.features.astype(np.float32)
        elif isinstance(source, TextSource):
            if self.bundle.text_featurizer is None:
                return "raw text, and the bundle has no text featurizer"
            row = source.text
        else:
            row, problem = self._from_collection(modality, item, json.loads(meta))
            if problem is not None:
                return problem
            if isinstance(row, np.ndarray):  # pixels, featurized with the chunk's other images
                chunk.pixels.append(row)
                row = None
        chunk.ids.append(item)
        chunk.metadata.append(meta)
        chunk.rows.append(row)
        return None

    def _from_collection(self, modality: str, item: str, metadata: dict) -> tuple[np.ndarray | str | None, str | None]:
        """A collection item's text, or its image decoded for the bundle, or (None, why there is none)."""
        client, index_name = self.source.client, self.source.index_name
        registered = collection_registry.registered(client, index_name, metadata.get("collection"))
        if registered is None:
            return None, "no source kept (sent as features before sources were kept, or no collection)"
        if modality == "image":
            path = registered.file(metadata.get("image"))
            if path is None:
                return None, "collection image file missing"
            if self.bundle.image_featurizer is None:
                return None, "the bundle has no image featurizer"
            try:
                return self.bundle.decode_image(path), None  # as the loader: the owner's files, Pillow's bound
            except ImageDecodeError as exc:
                return None, f"collection image does not decode: {exc}"[:120]
        texts = self._collection_texts(metadata["collection"], registered.manifest)
        text = None if texts is None else texts.get(item.removeprefix(ITEM_PREFIXES["text"]))
        if text is None or self.bundle.text_featurizer is None:
            return (
                None,
                "collection row missing from its manifest" if text is None else "the bundle has no text featurizer",
            )
        return text, None

    def _collection_texts(self, name: str, manifest) -> dict[str, str] | None:
        if name not in self._texts:
            try:
                self._texts[name] = {row.id: row.text for row in read_collection(manifest).items}
            except CollectionError:
                self._texts[name] = None
        return self._texts[name]

    def _features(self, modality: str, chunk: _Chunk) -> np.ndarray:
        """The chunk's feature vectors: given ones as they are, texts and images featurized in one call each."""
        x = np.zeros((len(chunk.ids), self.bundle.input_dim(modality)), dtype=np.float32)
        texts = [i for i, row in enumerate(chunk.rows) if isinstance(row, str)]
        images = [i for i, row in enumerate(chunk.rows) if row is None]
        given = [i for i, row in enumerate(chunk.rows) if isinstance(row, np.ndarray)]
        if texts:
            x[texts] = self.bundle.text_features([chunk.rows[i] for i in texts])
        if images:
            x[images] = self.bundle.image_features(np.stack(chunk.pixels))
        if given:
            x[given] = np.stack([chunk.rows[i] for i in given])
        return x
