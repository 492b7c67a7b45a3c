"""The demo corpus: the OpenClipart retrieval database (its images and its texts), ingested on the first
start so that a new service has something to search (setting ``demo_corpus``, on by default).

Items are ``img:<path>`` and ``txt:<path>`` with the title, the categories and the corpus ``path``
(from which the thumbnails are made) as metadata. Ingestion goes through the same path as the batch
endpoint (``service.ingest.store``), in the background, in a seeded random order so that a partly
ingested corpus already answers queries about any category. Progress (state, items done / total) is
kept in Redis, where ``/readyz`` reads it from every worker; once ``done`` for the index and bundle,
later starts ingest nothing. With several workers, one of them ingests (the first to claim the task).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from index.bundle import Bundle
from service import thumbnails
from service.ingest import Prepared, store
from service.runtime import Runtime

log = logging.getLogger("xmhash.demo")
BATCH = 256  # items per modality per write: the batch endpoint's default limit, one atomic write each
_TITLE_CHARS = 120  # of the item's text kept as its title (the metadata shown with a hit)
CORPUS_READER = "training.datasets.openclipart"  # needs the train extra: pip install 'xmhash[train]'


def _corpus_pixels(bundle: Bundle, path: Path) -> np.ndarray:
    """A corpus image decoded for the bundle's image featurizer (the corpus is trusted: Pillow's
    decompression-bomb warning for its few huge images is silenced; the hard limit still applies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return bundle.decode_image(path)


def _progress_key(runtime: Runtime) -> str:
    """Per index and bundle: items are namespaced by bundle, so a new bundle starts its own corpus."""
    return f"xmh:{runtime.settings.index_name}:{runtime.bundle.bundle_id}:demo-corpus"


def progress(runtime: Runtime) -> dict:
    """``{"state": …, "done": n, "total": N}``: off, pending, preparing (reading the corpus files),
    ingesting, done, or unavailable (the corpus is not installed: the service starts empty)."""
    raw = runtime.client.hgetall(_progress_key(runtime))
    if not raw:
        return {"state": "pending" if runtime.settings.demo_corpus else "off"}
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    return {key: int(value) if value.isdigit() else value for key, value in fields.items()}


def ingest_openclipart(runtime: Runtime) -> None:
    openclipart = importlib.import_module(CORPUS_READER)
    model = runtime.current  # the model serving when the demo starts; a swap meanwhile does not split the run
    key = _progress_key(runtime)
    if runtime.client.hget(key, "state") == b"done":
        log.info("demo corpus: already ingested (%s)", model.index.stats()["items"])
        return
    runtime.client.hset(key, "state", "preparing")
    log.info("demo corpus: reading OpenClipart (about 80 s on a fresh machine, cached under var/cache)")
    try:
        dataset = openclipart.load_openclipart(root=runtime.settings.corpus_root)
    except FileNotFoundError as exc:
        runtime.client.hset(key, mapping={"state": "unavailable", "error": str(exc)})
        log.warning("demo corpus: OpenClipart is not readable (%s); the service starts empty", exc)
        return
    rows = np.random.default_rng(0).permutation(dataset.split.database)
    root, max_pixels = runtime.settings.corpus_root, runtime.settings.max_image_pixels
    runtime.client.hset(key, mapping={"state": "ingesting", "done": 0, "total": len(rows)})
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        pixels = np.stack([_corpus_pixels(model.bundle, root / "png" / f"{dataset.ids[i]}.png") for i in part])
        images = model.bundle.image_features(pixels)
        texts = model.bundle.text_features([dataset.texts[i] for i in part])
        batch = []
        for j, i in enumerate(part):
            meta = {
                "path": dataset.ids[i],
                "title": dataset.texts[i][:_TITLE_CHARS],
                "labels": [dataset.label_names[c] for c in dataset.labels[i].nonzero()[0]],
            }
            batch.append(Prepared(f"img:{dataset.ids[i]}", "image", images[j], meta))
            batch.append(Prepared(f"txt:{dataset.ids[i]}", "text", texts[j], meta))
        store(runtime, model, batch)
        oversized = [i for i in part if thumbnails.exceeds(root / "png" / f"{dataset.ids[i]}.png", max_pixels)]
        thumbnails.keep_corpus_pixels(runtime, {f"img:{dataset.ids[i]}": dataset.images[i] for i in oversized})
        done = start + len(part)
        runtime.client.hset(key, "done", done)
        log.info("demo corpus: %d / %d items per modality", done, len(rows))
    seconds = time.perf_counter() - started
    runtime.client.hset(key, "state", "done")
    log.info(
        "demo corpus: ingested %d OpenClipart items per modality in %.1f s (%.0f items/s, images and texts)",
        len(rows),
        seconds,
        2 * len(rows) / seconds,
    )


def _ingest_logging_failures(runtime: Runtime) -> None:
    """A background thread's failure (Redis gone, …) is logged and the service keeps serving."""
    try:
        ingest_openclipart(runtime)
    except Exception:
        log.exception("demo corpus: ingestion stopped")


def start_demo_ingestion(runtime: Runtime) -> threading.Thread | None:
    if not runtime.claim("demo-ingest"):
        return None
    log.info("demo: worker %d ingests OpenClipart", os.getpid())
    thread = threading.Thread(target=_ingest_logging_failures, args=(runtime,), name="demo-ingest", daemon=True)
    thread.start()
    return thread
