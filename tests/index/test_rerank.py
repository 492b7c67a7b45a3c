"""The re-ranking step: the Hamming scan's candidates, whole tie groups, ordered by a real score."""

from __future__ import annotations

import numpy as np

from index import _hamming
from index.codes import pack_signs
from index.rerank import asymmetric_scores, rerank, within_tie_groups
from index.scan import BucketScan


def test_asymmetric_score_is_the_real_query_against_the_stored_signs() -> None:
    rng = np.random.default_rng(0)
    signs = np.where(rng.random((5, 16)) < 0.5, -1, 1).astype(np.int8)
    real = rng.normal(size=(2, 16)).astype(np.float32)
    codes = np.stack([pack_signs(signs)] * 2)
    assert np.allclose(asymmetric_scores(real, codes), real @ signs.T.astype(np.float32), atol=1e-5)


def test_candidates_extend_to_the_end_of_their_last_tie_group() -> None:
    distances = np.array([[0, 1, 1, 1, 2, -1], [0, 0, -1, -1, -1, -1]])
    assert within_tie_groups(distances, 2).tolist() == [
        [True, True, True, True, False, False],
        [True, True, False, False, False, False],
    ]


def test_scan_returns_the_codes_of_its_results_for_the_reranker() -> None:
    rng = np.random.default_rng(1)
    codes = pack_signs(np.where(rng.random((300, 64)) < 0.5, -1, 1))
    scan = BucketScan(64, 4)
    scan.add(np.arange(300), codes, rng.integers(0, 4, 300))
    query = codes[:3]
    probes = np.tile(np.arange(4), (3, 1))
    distances, labels, _, found = scan.search(query, probes, 10, with_codes=True)
    assert np.array_equal(found, codes[labels])
    plain = scan.search(query, probes, 10)
    assert np.array_equal(plain[0], distances) and np.array_equal(plain[1], labels)
    assert _hamming.topk.__doc__ and "out_codes" in _hamming.topk.__doc__


def test_a_tie_is_broken_by_the_real_score_never_by_storage_order() -> None:
    stored = np.ones((8, 8), dtype=np.int8) - 2 * np.eye(8, dtype=np.int8)  # item i differs from all-ones at bit i
    packed = pack_signs(stored)
    distances = np.ones((1, 8), dtype=np.int32)  # all eight at distance 1 from the query's signs (all ones)
    labels = np.arange(8)[None]
    for weak_bit in range(8):
        real = np.full((1, 8), 0.9, dtype=np.float32)
        real[0, weak_bit] = 0.1  # the query is least sure of this bit: the item differing there comes first
        ranked = rerank(distances, labels, labels, packed[None], real, cut=1)
        assert ranked.labels[0, 0] == weak_bit
        assert (np.diff(ranked.scores[0]) <= 0).all()
