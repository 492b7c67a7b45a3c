"""Hash health: its statistics on known codes, and the index's cached health and tie-group sizes."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from index.centers import fit_centers
from index.code_space import CodeSpace
from index.codes import pack_signs, to_signs, unpack_signs
from index.engine import HashIndex, Item
from index.hash_health import bucket_skew, distinct_fraction, measure, ones_fraction, tie_group_sizes

BITS = 16


def _random_codes(n: int, seed: int) -> np.ndarray:
    return pack_signs(to_signs(np.random.default_rng(seed).normal(size=(n, BITS))))


def test_ones_fraction_counts_each_bit_in_the_packed_bit_order() -> None:
    signs = to_signs(np.random.default_rng(0).normal(size=(300, BITS)))
    expected = (signs > 0).mean(axis=0)
    assert np.allclose(ones_fraction(pack_signs(signs), BITS), expected)
    only_bit_9 = np.zeros((4, BITS), dtype=np.int8) - 1
    only_bit_9[:, 9] = 1
    assert ones_fraction(pack_signs(only_bit_9), BITS).tolist() == [0.0] * 9 + [1.0] + [0.0] * 6


def test_a_degenerate_model_every_code_identical() -> None:
    n = 50
    codes = np.tile(pack_signs(to_signs(np.linspace(-1, 1, BITS)[None])), (n, 1))
    sizes = np.array([0, n, 0, 0])
    health = measure(codes, sizes, BITS)
    assert set(health.ones.tolist()) == {0.0, 1.0} and health.worst_balance == 0.5
    assert health.distinct == 1 / n and health.items == n
    assert (health.buckets_used, health.bucket_skew) == (1, 1.0)  # one bucket holds all: even among the used


def test_healthy_random_codes_are_balanced_distinct_and_spread() -> None:
    codes = _random_codes(4000, 1)
    health = measure(codes, np.array([1000, 1000, 1500, 500]), BITS)
    assert health.worst_balance < 0.05 and health.distinct > 0.95
    assert (health.buckets_used, health.bucket_skew) == (4, 1.5)


def test_bucket_skew_ignores_empty_buckets_and_an_empty_index_is_undefined() -> None:
    assert bucket_skew(np.array([0, 2, 6, 0])) == (2, 1.5)
    used, skew = bucket_skew(np.zeros(4, dtype=np.int64))
    assert used == 0 and np.isnan(skew)
    empty = measure(np.zeros((0, BITS // 8), np.uint8), np.zeros(4, np.int64), BITS)
    assert np.isnan(empty.ones).all() and np.isnan(empty.worst_balance) and np.isnan(empty.distinct)


def test_distinct_fraction_counts_whole_codes() -> None:
    codes = np.array([[1, 2], [1, 2], [2, 1], [1, 3]], dtype=np.uint8)
    assert distinct_fraction(codes) == 0.75


def test_tie_group_size_is_the_number_ranked_at_the_best_distance() -> None:
    distances = np.array([[2, 2, 2, 5], [0, 1, 1, 1], [3, 3, -1, -1], [-1, -1, -1, -1]], dtype=np.int32)
    assert tie_group_sizes(distances).tolist() == [3, 1, 2, 0]


def test_shapes_are_checked() -> None:
    with pytest.raises(AssertionError):
        ones_fraction(np.zeros((3, 2), np.uint8), 8)
    with pytest.raises(AssertionError):
        measure(np.zeros((3, 2), np.uint8), np.array([1, 1]), BITS)


def _open(server) -> HashIndex:
    centers, _ = fit_centers(unpack_signs(_random_codes(200, 9), BITS), 4, np.random.default_rng(0))
    return HashIndex.open(server.client(), uuid.uuid4().hex, CodeSpace("bundle1", BITS, centers, "v1"))


def test_the_index_health_is_of_what_it_holds_and_computed_again_only_after_a_change(any_redis) -> None:
    index = _open(any_redis)
    codes = _random_codes(300, 2)
    index.add([Item(f"i{i}", "image", c) for i, c in enumerate(codes)])
    health = index.health()
    assert health["image"].items == 300 and health["text"].items == 0
    assert np.allclose(health["image"].ones, ones_fraction(codes, BITS))
    assert health["image"].buckets_used == np.count_nonzero(index.stats()["bucket_sizes"]["image"])
    assert index.health() is health  # nothing changed: the cached statistics
    index.remove("i0")
    again = index.health()
    assert again is not health and again["image"].items == 299


def test_a_search_reports_each_querys_tie_group_at_its_best_distance(any_redis) -> None:
    index = _open(any_redis)
    codes = _random_codes(100, 3)
    same = np.tile(codes[:1], (7, 1))
    index.add([Item(f"t{i}", "text", c) for i, c in enumerate(np.concatenate([same, codes[1:]]))])
    seen: list[list[int]] = []
    index.search("text", codes[:1], 10, on_ties=lambda sizes: seen.append(sizes.tolist()))
    assert seen == [[7]]  # the seven copies of the query's code, at distance 0
    index.search("text", codes[:1], 3, on_ties=lambda sizes: seen.append(sizes.tolist()))
    assert seen[-1] == [3]  # bounded by how many the scan ranked
    seen.clear()
    index.search("text", codes[:1], 5, where={"x": 1}, on_ties=lambda sizes: seen.append(sizes.tolist()))
    assert len(seen) == 1  # a filter's further rounds are not counted again
