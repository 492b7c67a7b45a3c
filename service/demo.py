"""The demo corpus: the OpenClipart collection (``settings.demo_collection``, exported by ``make serve``
with ``python -m training export-collection``), loaded on the first start so that a new service has
something to search (setting ``demo_corpus``, on by default).

It goes through the collection loader (``service.collection``) as any collection does, in the
background, with the model serving when it starts; the export's rows come in a seeded random order so
that a partly loaded corpus already answers queries about any category. Progress (state, rows done /
total) is kept in Redis, where ``/readyz`` reads it from every worker; once ``done`` for the index and
bundle, later starts load nothing (and an interrupted load resumes where it stopped: ids are the key).
With several workers, one of them loads it (the first to claim the task).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from index.collection import CollectionError, read_collection
from index.redis_keys import IndexKeys
from service.collection import Loader, LoadReport
from service.runtime import Runtime

log = logging.getLogger("xmhash.demo")
DEMO_NAME = "demo"  # the demo collection's name in the index's collection registry (its thumbnails' folder)


def _progress_key(runtime: Runtime) -> str:
    """Per index and bundle: items are namespaced by bundle, so a new bundle starts its own corpus."""
    return IndexKeys(runtime.settings.index_name).bundle(runtime.bundle.bundle_id).demo_corpus


def progress(runtime: Runtime) -> dict:
    """``{"state": …, "done": n, "total": N}``: off, pending, preparing (reading the manifest),
    ingesting, done, or unavailable (no demo collection: the service starts empty)."""
    raw = runtime.client.hgetall(_progress_key(runtime))
    if not raw:
        return {"state": "pending" if runtime.settings.demo_corpus else "off"}
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    return {key: int(value) if value.isdigit() else value for key, value in fields.items()}


def ingest_demo_collection(runtime: Runtime) -> None:
    model = runtime.current  # the model serving when the demo starts; a swap meanwhile does not split the run
    key = _progress_key(runtime)
    if runtime.client.hget(key, "state") == b"done":
        log.info("demo corpus: already ingested (%s)", model.index.stats()["items"])
        return
    runtime.client.hset(key, "state", "preparing")
    try:
        collection = read_collection(runtime.settings.demo_collection)
    except CollectionError as exc:
        message = f"{exc}; build it with `make serve` or `python -m training export-collection openclipart DIR`"
        runtime.client.hset(key, mapping={"state": "unavailable", "error": message})
        log.warning("demo corpus: %s; the service starts empty", message)
        return
    total = len(collection.items)
    runtime.client.hset(key, mapping={"state": "ingesting", "done": 0, "total": total})
    started = time.perf_counter()
    settings = runtime.settings
    loader = Loader(model.bundle, model.index, runtime.client, settings.index_name, settings.max_image_pixels)

    counted = {"image": 0, "text": 0}

    def on_chunk(done: int, report: LoadReport) -> None:
        for modality, written in report.written.items():  # the ingestion metric, as the batch endpoint counts
            runtime.metrics.ingested.labels(modality).inc(written - counted[modality])
            counted[modality] = written
        runtime.client.hset(key, "done", done)
        log.info("demo corpus: %d / %d items per modality", done, total)

    report = loader.load(collection, DEMO_NAME, on_chunk)
    seconds = time.perf_counter() - started
    runtime.client.hset(key, "state", "done")
    log.info(
        "demo corpus: loaded %d items per modality in %.1f s (%.0f items/s, images and texts; %d rows skipped)",
        total,
        seconds,
        2 * total / seconds,
        len(report.skipped),
    )


def _ingest_logging_failures(runtime: Runtime) -> None:
    """A background thread's failure (Redis gone, …) is logged and the service keeps serving."""
    try:
        ingest_demo_collection(runtime)
    except Exception:
        log.exception("demo corpus: ingestion stopped")


def start_demo_ingestion(runtime: Runtime) -> threading.Thread | None:
    if not runtime.claim("demo-ingest"):
        return None
    log.info("demo: worker %d loads the demo collection", os.getpid())
    thread = threading.Thread(target=_ingest_logging_failures, args=(runtime,), name="demo-ingest", daemon=True)
    thread.start()
    return thread
