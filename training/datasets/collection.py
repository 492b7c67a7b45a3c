"""A collection of one's own (``index.collection``'s manifest) as a training dataset.

Rows are ordered by id and split with :func:`seeded_split`, so the split depends on the seed and the ids
alone, not on the manifest's row order: OpenClipart exported to a manifest (``python -m training
export-collection``) gets the built-in loader's split. A manifest whose rows carry ``split`` keeps its own
split instead (:func:`manifest_split`). Labels are the manifest's label strings, multi-hot, less those no
training item has (they cannot be learned and make no database item relevant); a collection without any
label is unlabelled (``labels`` has no column): unsupervised methods train on it and no metric is computed.

The images are decoded once at the pretrained image encoder's size (the preprocessing serving runs,
``index.bundle.pretrained.image_pixels``) by a process pool into a memory-mapped cache under
``var/cache``, keyed by the files' resolved paths, sizes and modification times; an image that passed
the reader's cheap check but fails to decode here is skipped and reported with the other bad rows.
Collections train on the pretrained featurizers only.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.bundle.featurizers import ImageDecodeError
from index.bundle.pretrained import IMAGE_SIZE, image_pixels
from index.collection import Collection, CollectionItem, SkippedRow, read_collection
from training.datasets.base import CrossModalDataset, Split, seeded_split
from training.datasets.openclipart import CACHE_DIR

MAX_QUERIES = 1000  # the query set: a fifth of the items, at most this many (OpenClipart's 1,000)
QUERY_SHARE = 5
PIXELS_VERSION = "upscale-v1"  # index.bundle.pretrained.image_pixels's preprocessing; bump when it changes
_DECODE_CHUNK = 16  # images per task sent to a decoding process
UNMARKED_SHOWN = 5  # lines named when rows lack the split the others have


def default_queries(n: int) -> int:
    """The query set's size for ``n`` items."""
    return min(MAX_QUERIES, max(1, n // QUERY_SHARE))


def _decode(path: str) -> np.ndarray | str:
    """Pixels of one image at the encoder's size, or why it does not decode (the collection owner's files
    are trusted like the corpus: no pixel bound beyond Pillow's own)."""
    try:
        return image_pixels(path, IMAGE_SIZE)
    except ImageDecodeError as exc:
        return str(exc)


def pixels_key(files: list[Path]) -> str:
    """Identifies the decoded pixels of ``files``: resolved paths, sizes and modification times."""
    stamps = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    tag = json.dumps([PIXELS_VERSION, IMAGE_SIZE, stamps])
    return hashlib.sha256(tag.encode()).hexdigest()[:16]


def decoded_pixels(files: list[Path], key: str, workers: int) -> tuple[np.ndarray, dict[int, str]]:
    """(pixels of the files that decode, in order, memory-mapped; {position: reason} of those that do not)."""
    cache = CACHE_DIR / "collection-pixels"
    pixels_file, failures_file = cache / f"{key}.npy", cache / f"{key}.json"
    if not failures_file.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"{key}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, IMAGE_SIZE, IMAGE_SIZE))
        failures, row = {}, 0
        with ProcessPoolExecutor(max_workers=workers) as pool:
            decoded = pool.map(_decode, map(str, files), chunksize=_DECODE_CHUNK)
            for position, result in enumerate(tqdm(decoded, total=len(files), desc="decoding collection images")):
                if isinstance(result, str):
                    failures[position] = result
                else:
                    out[row] = result  # good rows packed at the front: the dataset is a view, never a copy
                    row += 1
        out.flush()
        del out
        tmp.replace(pixels_file)
        failures_file.write_text(json.dumps({"rows": row, "failures": failures}))  # last: marks it complete
    record = json.loads(failures_file.read_text())
    pixels = np.load(pixels_file, mmap_mode="r")[: record["rows"]]
    return pixels, {int(position): reason for position, reason in record["failures"].items()}


def manifest_split(items: list[CollectionItem]) -> Split | None:
    """The split the rows' ``split`` fields give, laid out as :func:`seeded_split` lays its own: ``query``
    rows are the queries, ``train`` and ``database`` rows together the retrieval database, and ``train``
    rows alone the training set. None when no row has a ``split`` (the seeded split applies).

    Some rows with a ``split`` and some without is a ValueError, as is a split without queries or without
    training items: an unmarked row is most likely one added later, and putting it in any part silently
    could train on a held-out item or score on a training one."""
    parts = [item.split for item in items]
    if not any(parts):
        return None
    unmarked = sorted(item.line for item in items if item.split is None)
    if unmarked:
        lines = ", ".join(map(str, unmarked[:UNMARKED_SHOWN])) + (", …" if len(unmarked) > UNMARKED_SHOWN else "")
        raise ValueError(
            f"{len(unmarked)} of {len(items)} rows have no split (line {lines}) while the others have one: "
            "give every row a split (train, query or database), or none for the seeded split"
        )

    def rows(*names: str) -> np.ndarray:
        return np.array([i for i, part in enumerate(parts) if part in names], dtype=np.int64)

    split = Split(query=rows("query"), database=rows("train", "database"), train=rows("train"))
    if not len(split.query) or not len(split.train):
        sizes = ", ".join(f"{count} {name}" for name, count in split.sizes().items())
        raise ValueError(f"the manifest's split has {sizes}: it needs query rows and train rows")
    return split


def _labels(items: list[CollectionItem]) -> tuple[np.ndarray, list[str]]:
    names = sorted({label for item in items for label in item.labels})
    column = {name: j for j, name in enumerate(names)}
    labels = np.zeros((len(items), len(names)), dtype=np.uint8)
    for i, item in enumerate(items):
        labels[i, [column[label] for label in item.labels]] = 1
    return labels, names


def load_collection(
    path: str | Path, n_query: int | None = None, seed: int = 0, workers: int | None = None
) -> CrossModalDataset:
    """A collection with decoded pixels, raw texts, its labels (maybe none) and its split: the manifest's
    own when its rows have one (``n_query`` and ``seed`` then do not apply), else seeded by id."""
    collection: Collection = read_collection(path)
    ordered = sorted(collection.items, key=lambda item: item.id)
    files = [collection.image_file(item) for item in ordered]
    key = pixels_key(files)
    pixels, failures = decoded_pixels(files, key, workers or os.cpu_count() or 1)
    for position, reason in sorted(failures.items()):
        item = ordered[position]
        collection.skipped.append(SkippedRow(item.line, item.id, reason))
    items = [item for position, item in enumerate(ordered) if position not in failures]
    labels, names = _labels(items)
    split = manifest_split(items)
    split_from = "the manifest's split field" if split is not None else f"seeded by id, seed {seed}"
    split = split or seeded_split(len(items), n_query or default_queries(len(items)), None, seed)
    # A label no training item has cannot be learned, and makes no database item relevant: dropped.
    kept = labels[split.train].any(axis=0)
    return CrossModalDataset(
        name=str(collection.manifest),
        images=pixels,
        texts=[item.text for item in items],
        text_views=[list(item.short_texts) for item in items] if any(item.short_texts for item in items) else [],
        labels=labels[:, kept],
        label_names=[name for name, keep in zip(names, kept, strict=True) if keep],
        split=split,
        image_kind="pixels",
        text_kind="raw",
        ids=[item.id for item in items],
        default_features="pretrained",
        features_available=("pretrained",),
        pixels_key=f"{key}-{len(items)}",
        stats={
            "split_from": split_from,
            "skipped": len(collection.skipped),
            "labels_without_training_items": [name for name, keep in zip(names, kept, strict=True) if not keep],
            "skipped_rows": collection.report()["skipped_rows"],
        },
    )
