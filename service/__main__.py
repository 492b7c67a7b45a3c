"""``python -m service [--demo]``: run the service with uvicorn; ``python -m service load MANIFEST``: load a
collection into the service's Redis (``service.collection``).

With no ``REDIS_URL`` and no ``XMHASH_REDIS_SENTINELS`` (Sentinel mode, ``docs/ha.md``) an embedded
redis-server is started (data under ``var/service/redis``); with no
``XMHASH_BUNDLE_PATH`` the committed default model serves. The first start ingests the OpenClipart demo
corpus in the background (``XMHASH_DEMO_CORPUS=false``: start empty); the search page is at ``/``.
``--demo`` turns off write authorisation, binding to 127.0.0.1 only. Without ``--demo`` and without
``XMHASH_API_KEY``, a random key is generated and printed, so writes are never open by accident.
``XMHASH_WORKERS=n`` runs n worker processes (uvicorn's supervisor), each holding the index in memory
and following the others' writes through Redis's change feed; their metrics are merged (Prometheus
multiprocess mode).

``load`` featurizes a collection's images and texts with a bundle (default: the service's), writes them
into the index the service started on that bundle reads (``REDIS_URL`` or the sentinels, else the embedded Redis of
``XMHASH_DATA_DIR``; ``XMHASH_INDEX_NAME``), with a progress bar; run again after an interruption, it
writes only what is missing. It prints the report as JSON: items written, found stored, rows skipped
with their reasons. Stopped by Ctrl-C or SIGTERM (``kill``, a container stopping), it prints the report
so far (``"interrupted": true``) and says to run it again.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging.config
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import uvicorn
import uvicorn.config
from pydantic import SecretStr

from service.embedded import embedded_redis
from service.settings import Settings

_GENERATED_KEY_BYTES = 24  # random bytes of a generated API key (192 bits; 32 URL-safe characters)

# uvicorn's logging plus the service's own loggers (xmhash.*), applied in every worker process too.
LOG_CONFIG = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
LOG_CONFIG["formatters"]["xmhash"] = {"format": "%(levelname)s %(name)s: %(message)s"}
LOG_CONFIG["handlers"]["xmhash"] = {
    "formatter": "xmhash",
    "class": "logging.StreamHandler",
    "stream": "ext://sys.stderr",
}
LOG_CONFIG["loggers"]["xmhash"] = {"handlers": ["xmhash"], "level": "INFO", "propagate": False}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--demo", action="store_true", help="writes need no API key; 127.0.0.1 only")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    commands = parser.add_subparsers(dest="command")
    load = commands.add_parser("load", help="load a collection (manifest.jsonl) into the service's Redis")
    load.add_argument("manifest", type=Path, help="a collection manifest, or a folder holding manifest.jsonl")
    load.add_argument("--bundle", type=Path, default=None, help="bundle to featurize with (default: the service's)")
    load.add_argument("--redis-url", default=None, help="default: REDIS_URL or the sentinels, else the embedded Redis")
    load.add_argument("--index", default=None, help="index name (default: XMHASH_INDEX_NAME)")
    load.add_argument("--name", default=None, help="the collection's name (default: its folder's name)")
    args = parser.parse_args()
    logging.config.dictConfig(LOG_CONFIG)
    if args.command == "load":
        sys.exit(load_collection(args))

    overrides: dict = {"demo": args.demo} if args.demo else {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    settings = Settings(**overrides)
    if settings.demo:
        settings.host = "127.0.0.1"
    elif settings.api_key is None:
        key = secrets.token_urlsafe(_GENERATED_KEY_BYTES)
        settings.api_key = SecretStr(key)
        print(f"XMHASH_API_KEY not set: writes need this generated key (X-API-Key): {key}", flush=True)
    server = None
    if settings.redis_url is None and not settings.redis_sentinels:
        settings.redis_url, server = embedded_redis(settings.data_dir)
        print(f"embedded Redis at {settings.redis_url} (AOF in {settings.data_dir / 'redis'})", flush=True)
    os.environ.update(_worker_environment(settings))  # workers read their Settings from the environment
    metrics_dir = None
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="xmhash-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    print(f"serving on http://{settings.host}:{settings.port}/docs ({settings.workers} worker(s))", flush=True)
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
            log_config=LOG_CONFIG,
            access_log=settings.access_log,
        )
    finally:
        if server is not None:
            server.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM taken as Ctrl-C: a killed load reports what it wrote and says how to resume, as Ctrl-C does."""
    raise KeyboardInterrupt


def load_collection(args: argparse.Namespace) -> int:
    """``python -m service load``: the exit status (0 loaded, 2 nothing to load, 130 interrupted by Ctrl-C
    or SIGTERM)."""
    from tqdm import tqdm

    from index.bundle import BundleError, load_bundle
    from index.collection import CollectionError, read_collection
    from index.collection_registry import CollectionNameTaken
    from index.engine import HashIndex
    from index.redis_connection import connect
    from service.collection import Loader, LoadInterrupted

    signal.signal(signal.SIGTERM, _interrupt)

    overrides = {"index_name": args.index} if args.index else {}
    settings = Settings(**overrides)
    try:
        collection = read_collection(args.manifest)
        bundle = load_bundle(args.bundle or settings.bundle_path)
    except (CollectionError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.redis_url:  # this node, not the sentinels
        settings.redis_url, settings.redis_sentinels = args.redis_url, None
    server = None
    if settings.redis_url is None and not settings.redis_sentinels:
        settings.redis_url, server = embedded_redis(settings.data_dir)
    client = connect(settings.redis_target())
    try:
        index = HashIndex.open(client, settings.index_name, bundle.code_space, settings.shards)
        loader = Loader(bundle, index, client, settings.index_name, settings.max_image_pixels, os.cpu_count() or 1)
        name = args.name or collection.folder.name
        with tqdm(total=len(collection.items), desc=f"loading {collection.manifest.name}", unit="item") as bar:
            report = loader.load(collection, name, lambda done, _: bar.update(done - bar.n))
    except CollectionNameTaken as exc:
        print(f"error: {exc} (--name)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if isinstance(exc, LoadInterrupted):
            _print_report(settings.index_name, bundle.bundle_id, exc.report.as_json() | {"interrupted": True})
        print("interrupted: run the same command again to load the rest", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
    _print_report(settings.index_name, bundle.bundle_id, report.as_json())
    return 0


def _print_report(index: str, bundle: str, report: dict) -> None:
    print(json.dumps({"index": index, "bundle": bundle, **report}, indent=2, ensure_ascii=False), flush=True)


def _worker_environment(settings: Settings) -> dict[str, str]:
    """What this command decided (demo, bind address, generated key, embedded Redis, the run's id) as
    the environment each worker builds its Settings from."""
    env = {
        "XMHASH_DEMO": str(settings.demo).lower(),
        "XMHASH_HOST": settings.host,
        "XMHASH_PORT": str(settings.port),
        "XMHASH_RUN_ID": settings.run_id,
    }
    if settings.redis_url is not None:
        env["REDIS_URL"] = settings.redis_url
    if settings.api_key is not None:
        env["XMHASH_API_KEY"] = settings.api_key.get_secret_value()
    return env


if __name__ == "__main__":
    main()
