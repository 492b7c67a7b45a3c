"""``/metrics`` shows the hash health of the model in service: a degenerate index reads as one."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from index.bundle.reader import read_manifest
from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings

KEY = {"X-API-Key": "test-key"}
SAME = 30  # image items, all sent with one feature vector: one code, a degenerate index
BITS = read_manifest(DEFAULT_BUNDLE).code_bits


@pytest.fixture(scope="module")
def client(any_redis):
    settings = Settings(
        redis_url=any_redis.url,
        bundle_path=DEFAULT_BUNDLE,
        index_name=uuid.uuid4().hex,
        api_key="test-key",
        demo_corpus=False,
    )
    with TestClient(create_app(settings)) as c:
        rng = np.random.default_rng(0)
        same = rng.random(1280).round(3).tolist()
        texts = np.zeros((40, 384))
        for row in texts:
            row[rng.choice(384, 8, replace=False)] = 1.0
        items = [{"id": f"img:{i}", "modality": "image", "features": same} for i in range(SAME)] + [
            {"id": f"txt:{i}", "modality": "text", "features": x} for i, x in enumerate(texts.tolist())
        ]
        assert c.post("/v1/items:batch", json={"items": items}, headers=KEY).status_code == 200
        yield c


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_degenerate_index_shows_constant_bits_one_code_and_one_bucket(client) -> None:
    found = samples(client)
    ones = [found["xmhash_hash_bit_ones_fraction", (("bit", str(b)), ("modality", "image"))] for b in range(BITS)]
    assert set(ones) <= {0.0, 1.0}
    image = (("modality", "image"),)
    assert found["xmhash_hash_bit_balance_worst", image] == 0.5
    assert found["xmhash_hash_distinct_codes_ratio", image] == pytest.approx(1 / SAME)
    assert found["xmhash_hash_buckets_nonempty", image] == 1
    assert found["xmhash_hash_bucket_max_over_mean", image] == 1.0


def test_distinct_inputs_read_as_a_healthier_index(client) -> None:
    found = samples(client)
    text = (("modality", "text"),)
    assert found["xmhash_hash_distinct_codes_ratio", text] > 0.9
    ones = [found["xmhash_hash_bit_ones_fraction", (("bit", str(b)), ("modality", "text"))] for b in range(BITS)]
    assert np.mean([0 < f < 1 for f in ones]) > 0.9  # a few bits may be constant over 40 sparse random inputs
    assert 0 < found["xmhash_hash_buckets_nonempty", text] <= 40
    assert found["xmhash_hash_bucket_max_over_mean", text] >= 1.0


def test_each_search_records_its_tie_group_at_the_best_distance(client) -> None:
    target = (("target", "image"),)
    before = samples(client)
    count, total = (before.get((f"xmhash_search_tie_group_size_{s}", target), 0.0) for s in ("count", "sum"))
    for words in ([3], [40, 100]):
        x = [0.0] * 384
        for w in words:
            x[w] = 1.0
        assert client.post("/v1/search/text-to-image", json={"features": x, "k": 5, "probe": "all"}).status_code == 200
    after = samples(client)
    assert after["xmhash_search_tie_group_size_count", target] == count + 2
    # every image shares one code, so all tie at any query's best distance (the re-ranker's scan ranks all 30)
    assert after["xmhash_search_tie_group_size_sum", target] == total + 2 * SAME
