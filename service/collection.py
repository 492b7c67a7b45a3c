"""Load a collection (``index.collection``'s manifest) into an index: each image and text featurized and
hashed by the bundle, as the service encodes them, and written in chunks.

Items are ``img:<id>`` and ``txt:<id>``; their metadata is the text's first ``TITLE_CHARS`` characters
(``title``), the row's ``metadata`` (which may set its own ``title``), its ``labels``, the ``collection``
name and the ``image`` path inside the collection's folder. The collection is registered under that name
in Redis (``index.collection_registry``), so the search page shows the images' thumbnails.

Resumable: ids are the key. Each chunk first asks the index which of its ids are stored and featurizes
only the others, so a second run after an interruption writes exactly what is missing, and a run over
a complete collection writes nothing. An interrupted load raises :class:`LoadInterrupted`, a
``KeyboardInterrupt`` carrying the report so far, so the command line can still print it. Rows the
reader skips, and images that do not decode, are reported with their reasons and never stop the load.

Every write goes through :func:`write_chunk` (one modality's ids, packed codes and metadata): the bulk
importer's atomic chunk write (``index.bulk_import``, the path of ``python -m index import``), whose
change-feed entry the loading process then applies, so the loaded items are searchable in it at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pydantic_core

from index import collection_registry
from index.bulk_import import Chunk, import_chunks
from index.bundle import Bundle
from index.bundle.featurizers import ImageDecodeError
from index.collection import ITEM_PREFIXES, Collection, CollectionItem, SkippedRow
from index.engine import HashIndex
from service import thumbnails

log = logging.getLogger("xmhash.collection")
CHUNK = 64  # rows per chunk: featurized together, written as one batch per modality
TITLE_CHARS = 120  # of an item's text kept as its title (the metadata shown with a hit)
CHUNK_KEY_HEX = 16  # hex digits of the sha256 of a chunk's ids naming it in its import job


@dataclass
class LoadReport:
    """What a load did: items written per modality, items found already stored, rows skipped and why."""

    written: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    already_stored: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    skipped: list[SkippedRow] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "written": self.written,
            "already_stored": self.already_stored,
            "skipped": len(self.skipped),
            "skipped_rows": [{"line": s.line, "id": s.id, "reason": s.reason} for s in self.skipped],
        }


class LoadInterrupted(KeyboardInterrupt):
    """A load stopped by an interrupt (Ctrl-C, or SIGTERM turned into one), with its report so far: every
    chunk it counts as written is stored."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__("load interrupted")
        self.report = report


def write_chunk(index: HashIndex, modality: str, ids: list[str], codes: np.ndarray, metadata: list[dict]) -> None:
    """Store one modality's items (ids, packed codes (n, bits / 8) uint8, metadata dicts), all or none, as one
    chunk of the bulk importer (job ``collection:<modality>``, chunk named by its ids; resuming is by id,
    so the job's done-list is not read), then apply it to ``index`` from the change feed."""
    key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:CHUNK_KEY_HEX]
    chunk = Chunk(key, modality, ids, codes, [pydantic_core.to_json(meta) for meta in metadata])
    import_chunks(index.store, f"collection:{modality}", [chunk], done=set(), progress=False)
    index.catch_up()


def _metadata(name: str, item: CollectionItem) -> dict:
    return {
        "title": item.text[:TITLE_CHARS],
        **item.metadata,
        "labels": list(item.labels),
        "collection": name,
        "image": item.image,
    }


def _pixels(bundle: Bundle, collection: Collection, item: CollectionItem) -> np.ndarray | str:
    """The image decoded for the bundle, or why it does not decode (the collection's files are its owner's:
    no pixel bound beyond Pillow's own)."""
    try:
        return bundle.decode_image(collection.image_file(item))
    except ImageDecodeError as exc:
        return str(exc)


class Loader:
    """Loads one collection into one index under a registered name, chunk by chunk."""

    def __init__(
        self, bundle: Bundle, index: HashIndex, client, index_name: str, max_pixels: int, decode_threads: int = 1
    ) -> None:
        """``decode_threads``: images decoded at once (Pillow decodes without the GIL); the command line uses
        every core, the service's background demo loading one, leaving the others to queries."""
        self.bundle = bundle
        self.index = index
        self.client = client
        self.index_name = index_name
        self.max_pixels = max_pixels
        self.decode_threads = decode_threads

    def load(
        self, collection: Collection, name: str, on_chunk: Callable[[int, LoadReport], None] | None = None
    ) -> LoadReport:
        """Load every row not stored yet; ``on_chunk(rows done, report so far)`` after each chunk. An
        interrupt raises :class:`LoadInterrupted` with the report so far."""
        collection_registry.register(self.client, self.index_name, name, collection.manifest)
        report = LoadReport(skipped=list(collection.skipped))
        try:
            for start in range(0, len(collection.items), CHUNK):
                self._chunk(collection, name, collection.items[start : start + CHUNK], report)
                if on_chunk is not None:
                    on_chunk(min(start + CHUNK, len(collection.items)), report)
        except KeyboardInterrupt as exc:
            raise LoadInterrupted(report) from exc
        return report

    def _missing(self, modality: str, items: list[CollectionItem], report: LoadReport) -> list[CollectionItem]:
        """The items whose ``modality`` item is not stored yet (one round trip); an id that another writer
        stored under the other modality is reported as a skipped row (the index refuses to change it)."""
        ids = [ITEM_PREFIXES[modality] + item.id for item in items]
        stored = self.index.stored_modalities(ids)
        missing = []
        for item, item_id in zip(items, ids, strict=True):
            if stored[item_id] is None:
                missing.append(item)
            elif stored[item_id] == modality:
                report.already_stored[modality] += 1
            else:
                reason = f"{item_id} is stored as a {stored[item_id]} item"
                report.skipped.append(SkippedRow(item.line, item.id, reason))
        return missing

    def _chunk(self, collection: Collection, name: str, items: list[CollectionItem], report: LoadReport) -> None:
        images = self._missing("image", items, report)
        with ThreadPoolExecutor(self.decode_threads) as pool:
            pixels = pool.map(lambda item: _pixels(self.bundle, collection, item), images)
            decoded = list(zip(images, pixels, strict=True))
        for item, result in decoded:
            if isinstance(result, str):
                report.skipped.append(SkippedRow(item.line, item.id, result))
        good = [(item, pixels) for item, pixels in decoded if not isinstance(pixels, str)]
        if good:
            codes = self.bundle.packed_codes("image", self.bundle.image_features(np.stack([p for _, p in good])))
            meta = [_metadata(name, item) for item, _ in good]
            write_chunk(self.index, "image", [ITEM_PREFIXES["image"] + item.id for item, _ in good], codes, meta)
            report.written["image"] += len(good)
            large = {
                ITEM_PREFIXES["image"] + item.id: pixels
                for item, pixels in good
                if thumbnails.exceeds(collection.image_file(item), self.max_pixels)
            }
            thumbnails.keep_pixels(self.client, self.index_name, large)  # too large to decode on request
        failed = {item.id for item, result in decoded if isinstance(result, str)}
        texts = [item for item in self._missing("text", items, report) if item.id not in failed]
        if texts:
            codes = self.bundle.packed_codes("text", self.bundle.text_features([item.text for item in texts]))
            meta = [_metadata(name, item) for item in texts]
            write_chunk(self.index, "text", [ITEM_PREFIXES["text"] + item.id for item in texts], codes, meta)
            report.written["text"] += len(texts)
