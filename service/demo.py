"""``--demo``: ingest the OpenClipart retrieval database (its images and its texts) so one can search.

Items are ``img:<path>`` and ``txt:<path>`` with the title and categories as metadata. Ingestion goes
through the same path as the batch endpoint (``service.ingest.store``), in the background, and skips
items already present, so restarting the demo does not ingest twice. With several workers, one of
them ingests (the first to claim the task); the others see the items through the change feed.

The corpus reader is training code (``training.datasets.openclipart``, in the ``train`` extra). Serving
never imports training, so the demo, a development mode, loads it by name only when it runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

from service.ingest import Prepared, store
from service.runtime import Runtime

log = logging.getLogger("xmhash.demo")
BATCH = 256  # items per modality per write: the batch endpoint's default limit, one atomic write each
_TITLE_CHARS = 120  # of the item's text kept as its title (the metadata shown with a hit)
CORPUS_READER = "training.datasets.openclipart"  # needs the train extra: pip install 'xmhash[train]'


def ingest_openclipart(runtime: Runtime) -> None:
    dataset = importlib.import_module(CORPUS_READER).load_openclipart()
    rows = dataset.split.database
    model = runtime.current  # the model serving when the demo starts; a swap meanwhile does not split the run
    present = model.index.stats()["items"]
    if present["image"] >= len(rows) and present["text"] >= len(rows):
        log.info("demo: OpenClipart already ingested (%s)", present)
        return
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        images = model.bundle.image_features(dataset.images[part])
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
    log.info("demo: ingested %d OpenClipart items per modality", len(rows))


def start_demo_ingestion(runtime: Runtime) -> threading.Thread | None:
    if not runtime.claim("demo-ingest"):
        return None
    log.info("demo: worker %d ingests OpenClipart", os.getpid())
    thread = threading.Thread(target=ingest_openclipart, args=(runtime,), name="demo-ingest", daemon=True)
    thread.start()
    return thread
