"""A real HTTP service holding a small demo corpus, for the page's browser tests and the README's examples.

The corpus is a few dozen real OpenClipart items (the fruit of the database split and a seeded sample
of the rest of it), exported as a collection (``python -m training export-collection``'s code) and loaded
by the service's own first-start demo loading. The app runs in uvicorn on a free port in a thread of
the test process.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from index.redis_server import free_port
from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings
from training.datasets import openclipart

FRUIT = 24  # database items of food/fruit: text queries about fruit find pictures of fruit
OTHERS = 24  # a seeded sample of everything else


def export_small_demo(out: Path) -> Path:
    """The small demo corpus, FRUIT + OTHERS real items, exported as a collection into ``out``: its manifest."""
    dataset = openclipart.load_openclipart()
    database = dataset.split.database
    fruit = [i for i in database if dataset.ids[i].startswith("food/fruit/")][:FRUIT]
    rest = np.setdiff1d(database, fruit)
    chosen = np.concatenate([fruit, np.random.default_rng(0).choice(rest, OTHERS, replace=False)])
    manifest, counts = openclipart.export_collection(out, only={dataset.ids[i] for i in chosen})
    assert counts["items"] == FRUIT + OTHERS
    return manifest


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest of the small demo corpus (exported once per test session)."""
    return export_small_demo(tmp_path_factory.mktemp("demo"))


def demo_progress(base_url: str) -> dict:
    return httpx.get(f"{base_url}/readyz", timeout=10).json()["demo_corpus"]


def wait_for_demo_corpus(base_url: str, timeout: float = 180) -> dict:
    """Until the demo ingestion ends (done or unavailable); its last progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = demo_progress(base_url)
        if progress["state"] in ("done", "unavailable"):
            return progress
        time.sleep(0.2)
    raise TimeoutError(f"demo corpus still {progress} after {timeout} s")


@contextmanager
def served(settings: Settings) -> Iterator[str]:
    """The app over real HTTP on 127.0.0.1 (uvicorn in a thread); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def small_service(redis_server, small_demo: Path) -> Iterator[str]:
    """Base URL of a service whose first start loaded the small demo corpus (writes need ``page-key``)."""
    settings = Settings(
        redis_url=redis_server.url,
        bundle_path=DEFAULT_BUNDLE,
        index_name=f"page-{uuid.uuid4().hex[:8]}",
        api_key="page-key",
        demo_corpus=True,
        demo_collection=small_demo,
    )
    with served(settings) as base_url:
        assert wait_for_demo_corpus(base_url) == {"state": "done", "done": FRUIT + OTHERS, "total": FRUIT + OTHERS}
        yield base_url
