"""A search request's hash function run is shared with the queries that queue with it: each query still
gets its own code and real code, the same as hashed alone."""

from __future__ import annotations

import asyncio

import numpy as np

from index.bundle import load_bundle
from service.encoder import Batching, Encoder
from service.settings import DEFAULT_BUNDLE


def test_concurrent_queries_share_hash_runs_and_each_gets_its_own_code() -> None:
    sizes: dict[str, list[int]] = {"featurize": [], "hash": []}
    batching = Batching(0.002, 16, lambda stage, modality: lambda size, waits: sizes[stage].append(size))
    encoder = Encoder(load_bundle(DEFAULT_BUNDLE, threads=1), 10_000, 10**7, 10**8, batching)
    rng = np.random.default_rng(0)
    queries = [(m, rng.normal(scale=0.05, size=encoder.bundle.input_dim(m)).astype(np.float32)) for m in
               ["text", "image"] * 48]  # fmt: skip

    async def concurrently() -> list:
        return list(await asyncio.gather(*(encoder.code(modality, x, "features") for modality, x in queries)))

    coded = asyncio.run(concurrently())
    encoder.close()
    assert max(sizes["hash"]) > 1  # runs were shared
    for (modality, x), got in zip(queries, coded, strict=True):
        [alone] = encoder.code_rows(modality, [(x, "features")])
        assert np.array_equal(got.code, alone.code) and np.array_equal(got.real, alone.real)
        assert got.code.shape == (1, encoder.bundle.bits // 8) and got.kind == "features"


def test_without_batching_a_query_is_hashed_alone() -> None:
    encoder = Encoder(load_bundle(DEFAULT_BUNDLE, threads=1), 10_000, 10**7, 10**8)
    x = np.full(encoder.bundle.input_dim("text"), 0.01, dtype=np.float32)
    coded = asyncio.run(encoder.code("text", x, "features"))
    assert coded.code.shape == (1, encoder.bundle.bits // 8) and coded.real is not None
