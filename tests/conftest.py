"""Shared fixtures. Synthetic data here is for unit tests only, never for reported results."""

from __future__ import annotations

import numpy as np
import pytest


def make_synthetic_crossmodal(
    n: int = 600, n_classes: int = 6, image_dim: int = 40, text_dim: int = 60, seed: int = 0
) -> dict[str, np.ndarray]:
    """Two modalities generated from shared multi-hot labels plus noise (a learnable toy problem)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_classes)) < 1.5 / n_classes).astype(np.int8)
    labels[np.arange(n), rng.integers(0, n_classes, n)] = 1  # every item has at least one label
    image_basis = rng.normal(size=(n_classes, image_dim))
    text_basis = rng.normal(size=(n_classes, text_dim))
    image = labels @ image_basis + 0.5 * rng.normal(size=(n, image_dim))
    text = np.maximum(labels @ text_basis + 0.5 * rng.normal(size=(n, text_dim)), 0)
    return {"image": image, "text": text, "labels": labels}


@pytest.fixture
def synthetic() -> dict[str, np.ndarray]:
    return make_synthetic_crossmodal()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One real redis-server for the session; tests isolate themselves by index name."""
    from index.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
