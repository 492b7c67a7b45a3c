"""The pretrained featurizers end to end: served codes equal the trainer's, and people's own queries work.

The corpus is featurized once per session through the training cache (``var/cache/pretrained-features``,
computed by the serving runtime; the parity test below is what makes that cache stand for the service).
"""

from __future__ import annotations

import asyncio
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.bundle import load_bundle
from index.codes import pack_signs, to_signs
from service.app import create_app
from service.encoder import Batching, Encoder
from service.settings import DEFAULT_BUNDLE, Settings
from training.bundle.writer import write_bundle
from training.datasets import load_dataset
from training.datasets.base import CrossModalDataset
from training.evaluation.natural_queries import NATURAL_QUERIES
from training.featurize.pipeline import FeatureSet, featurize
from training.registry import TRAINERS

KEY = {"X-API-Key": "test-key"}
BATCH = 256


@pytest.fixture(scope="module")
def corpus() -> tuple[CrossModalDataset, FeatureSet]:
    dataset = load_dataset("openclipart")
    return dataset, featurize(dataset)


def _file_bytes(dataset: CrossModalDataset, row: int) -> bytes:
    return (dataset.image_root / "png" / f"{dataset.ids[row]}.png").read_bytes()


def test_served_codes_of_raw_inputs_equal_the_trainers_codes_on_the_whole_query_set(corpus, tmp_path: Path) -> None:
    """Each query item as a search request encodes it (one raw text, one PNG's bytes, all queued at once on
    the encoder's micro-batchers, so they share featurizer calls, then hashed in shared runs; one
    onnxruntime thread) against the trainer's codes of the cached training features, bit for bit."""
    dataset, features = corpus
    hasher = TRAINERS["cca"](features, 64, 0, {})
    write_bundle(tmp_path / "cca", hasher, features, {})
    sizes: dict[str, list[int]] = {"featurize": [], "hash": []}
    batching = Batching(0.002, 16, lambda stage, modality: lambda size, waits: sizes[stage].append(size))
    encoder = Encoder(load_bundle(tmp_path / "cca", threads=1), 10_000, 10**9, 10**9, batching)
    query = dataset.split.query
    image, text, _ = features.part("query")
    trainer = {m: pack_signs(to_signs(hasher.encoders[m].real_codes(x))) for m, x in (("image", image), ("text", text))}
    with warnings.catch_warnings():  # the corpus has a few very large PNGs; trusted here
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pending_images = [encoder.image_features(_file_bytes(dataset, i)) for i in query]
    pending_texts = [encoder.text_features(dataset.texts[i], True) for i in query]

    async def codes(modality: str, pending: list) -> np.ndarray:
        coded = await asyncio.gather(*(encoder.code(modality, future.result(), "raw") for future in pending))
        return np.concatenate([query.code for query in coded])

    served = {"image": asyncio.run(codes("image", pending_images)), "text": asyncio.run(codes("text", pending_texts))}
    encoder.close()
    assert len(query) == 1000 and max(sizes["featurize"]) > 1 and max(sizes["hash"]) > 1
    for modality, codes in served.items():
        differing = np.flatnonzero((codes != trainer[modality]).any(axis=1))
        assert differing.size == 0, f"{modality}: {differing.size} of 1000 query items differ"


@pytest.fixture(scope="module")
def service(any_redis, corpus):
    """The default bundle served over HTTP with the demo corpus (the database split) ingested as the
    bundle's featurizers see it: the cached features of the same graphs, sent through the batch endpoint."""
    dataset, features = corpus
    settings = Settings(
        redis_url=any_redis.url,
        bundle_path=DEFAULT_BUNDLE,
        index_name=uuid.uuid4().hex,
        api_key="test-key",
        demo_corpus=False,
    )
    with TestClient(create_app(settings)) as client:
        rows = dataset.split.database
        for start in range(0, len(rows), BATCH // 2):
            part = rows[start : start + BATCH // 2]
            items = [
                {"id": f"{m}:{dataset.ids[i]}", "modality": m, "features": x[i].tolist(), "metadata": {"row": int(i)}}
                for i in part
                for m, x in (("image", features.image), ("text", features.text))
            ]
            response = client.post("/v1/items:batch", json={"items": items}, headers=KEY)
            assert response.status_code == 200 and response.json()["rejected"] == 0, response.text
        yield client


def _precision(dataset: CrossModalDataset, response, label: str) -> float:
    column = dataset.label_names.index(label)
    rows = [hit["metadata"]["row"] for hit in response.json()["results"]]
    return float(np.mean([dataset.labels[r, column] for r in rows])) if rows else 0.0


# Issue 14's goal is a mean P@10 of 0.8; the committed default bundle (DSFH 64 bits with text views) measures
# 0.737 on these queries through this API (docs/results_pretrained.md, "Why natural queries fail"), so the
# goal is open. This floor keeps what is reached from slipping.
NATURAL_QUERY_FLOOR = 0.73


def test_natural_queries_are_all_understood_and_mostly_answered_on_topic(service, corpus) -> None:
    dataset, _ = corpus
    assert len(NATURAL_QUERIES) >= 60
    precision = {}
    for text, label in NATURAL_QUERIES.items():
        response = service.post("/v1/search/text-to-image", json={"text": text, "k": 10})
        assert response.status_code == 200, (text, response.text)
        precision[text] = _precision(dataset, response, label)
    mean = float(np.mean(list(precision.values())))
    worst = sorted(precision.items(), key=lambda kv: kv[1])[:10]
    assert mean >= NATURAL_QUERY_FLOOR, f"mean P@10 {mean:.3f}; worst: {worst}"


def test_held_out_query_images_find_texts_of_their_categories(service, corpus) -> None:
    dataset, _ = corpus
    rows = np.random.default_rng(2).choice(dataset.split.query, 100, replace=False)
    precision = []
    for i in rows:
        data = _file_bytes(dataset, i)
        response = service.post("/v1/search/image-to-text/upload", files={"image": ("q.png", data)}, data={"k": "10"})
        assert response.status_code == 200, response.text
        hits = [hit["metadata"]["row"] for hit in response.json()["results"]]
        precision.append(float((dataset.labels[hits] @ dataset.labels[i] > 0).mean()))
    assert np.mean(precision) >= 0.8, f"mean P@10 {np.mean(precision):.3f}"


@pytest.fixture(scope="module")
def demo_service(any_redis, corpus):
    """The default bundle over HTTP with the whole demo corpus, ids as the demo loader writes them
    (``img:<id>``, ``txt:<id>``), ingested through the batch endpoint from the cached features."""
    dataset, features = corpus
    settings = Settings(redis_url=any_redis.url, bundle_path=DEFAULT_BUNDLE, index_name=uuid.uuid4().hex,
                        api_key="test-key", demo_corpus=False)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(dataset.ids), BATCH // 2):
            items = [
                {"id": f"{prefix}:{dataset.ids[i]}", "modality": m, "features": x[i].tolist(),
                 "metadata": {"title": dataset.texts[i][:80]}}
                for i in range(start, min(start + BATCH // 2, len(dataset.ids)))
                for prefix, m, x in (("img", "image", features.image), ("txt", "text", features.text))
            ]  # fmt: skip
            response = client.post("/v1/items:batch", json={"items": items}, headers=KEY)
            assert response.status_code == 200 and response.json()["rejected"] == 0, response.text
        yield client


def _names(hit: dict, thing: str) -> bool:
    """The hit is the thing: its file name has the word (``apple_core``, not ``pineapple``) or its title does."""
    pattern = rf"(?<![a-z]){thing}s?(?![a-z])"
    return bool(re.search(pattern, hit["id"].lower()) or re.search(pattern, hit["metadata"]["title"].lower()))


@pytest.mark.parametrize(("query", "thing"), [("red apple", "apple"), ("guitar", "guitar")])
def test_a_query_naming_an_object_finds_that_object_in_its_top_three(demo_service, query: str, thing: str) -> None:
    """The category alone is not enough: among the fruit (or the instruments), the thing named comes first."""
    response = demo_service.post("/v1/search/text-to-image", json={"text": query, "k": 3})
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert any(_names(hit, thing) for hit in hits), [hit["id"] for hit in hits]
    assert all(hit["score"] is not None for hit in hits)  # ranked by the re-ranker's real score, not storage order


def test_more_like_an_apple_returns_apples_first(demo_service) -> None:
    query = {"id": "img:food/fruit/an_apple_01", "target": "image", "k": 3}
    response = demo_service.post("/v1/search/similar", json=query)
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert all(_names(hit, "apple") for hit in hits), [hit["id"] for hit in hits]
