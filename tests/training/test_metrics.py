"""The evaluation protocol, checked against hand-computed cases and brute force."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from index.codes import hamming_distances, pack_signs, to_signs, unpack_signs
from training.evaluation.metrics import evaluate_codes, evaluate_scores

# One query [+1, +1] against four database codes at Hamming distances 0, 1, 1, 2.
QUERY = np.array([[1, 1]], dtype=np.int8)
DATABASE = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.int8)
# Items 0 and 2 share the query's label; 1 and 3 do not.
QUERY_LABELS = np.array([[1, 0]])
DB_LABELS = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])


def test_ties_are_broken_by_database_index() -> None:
    # Ranking 0(rel), 1, 2(rel), 3 → AP = (1/1 + 2/3) / 2.
    m = evaluate_codes(QUERY, DATABASE, QUERY_LABELS, DB_LABELS, map_at=(2,), precision_at=(1, 3))
    assert m["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["MAP@2"] == pytest.approx(1.0)  # top 2 holds one relevant item, found at rank 1
    assert m["P@1"] == pytest.approx(1.0)
    assert m["P@3"] == pytest.approx(2 / 3)


def test_tie_averaged_map_is_the_expectation_over_tie_orders() -> None:
    # Items 1 and 2 tie at distance 1: item 2 lands at rank 2 or 3 with equal chance.
    m = evaluate_codes(QUERY, DATABASE, QUERY_LABELS, DB_LABELS)
    assert m["mAP_tie_averaged"] == pytest.approx((1 + 0.5 * 2 / 2 + 0.5 * 2 / 3) / 2)


def _brute_force_expected_ap(dist: np.ndarray, rel: np.ndarray) -> float:
    groups = [np.flatnonzero(dist == d) for d in np.unique(dist)]
    aps = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranked = rel[np.concatenate(orders)]
        hits = np.cumsum(ranked)
        aps.append((hits / np.arange(1, len(ranked) + 1))[ranked].sum() / ranked.sum())
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", range(5))
def test_tie_averaged_map_matches_enumeration_of_all_tie_orders(seed: int) -> None:
    rng = np.random.default_rng(seed)
    query = to_signs(rng.normal(size=(1, 3)))
    db = to_signs(rng.normal(size=(7, 3)))
    q_labels, db_labels = np.array([[1, 0, 0]]), rng.integers(0, 2, (7, 3))
    db_labels[0] = [1, 0, 0]  # at least one relevant item
    m = evaluate_codes(query, db, q_labels, db_labels)
    dist = hamming_distances(query, db)[0]
    rel = (db_labels @ q_labels[0]) > 0
    assert m["mAP_tie_averaged"] == pytest.approx(_brute_force_expected_ap(dist, rel))


def test_queries_without_relevant_items_are_excluded_and_counted() -> None:
    query = np.vstack([QUERY, QUERY])
    labels = np.array([[1, 0], [0, 0]])  # the second query has no label in common with anyone
    m = evaluate_codes(query, DATABASE, labels, DB_LABELS)
    assert m["queries"] == 2
    assert m["queries_without_relevant"] == 1
    assert m["mAP"] == pytest.approx((1 + 2 / 3) / 2)


def test_map_at_k_scores_zero_when_top_k_holds_nothing_relevant() -> None:
    labels = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])  # only the farthest item is relevant
    m = evaluate_codes(QUERY, DATABASE, QUERY_LABELS, labels, map_at=(2,))
    assert m["MAP@2"] == 0.0
    assert m["mAP"] == pytest.approx(1 / 4)


def test_precision_recall_by_hamming_radius() -> None:
    m = evaluate_codes(QUERY, DATABASE, QUERY_LABELS, DB_LABELS)
    assert m["pr_radius"]["precision"] == pytest.approx([1.0, 2 / 3, 0.5])
    assert m["pr_radius"]["recall"] == pytest.approx([0.5, 1.0, 1.0])


def test_precision_at_top_n_curve_ends_at_the_relevant_fraction() -> None:
    m = evaluate_codes(QUERY, DATABASE, QUERY_LABELS, DB_LABELS, topn_points=4)
    assert m["precision_topn"]["n"] == [1, 2, 3, 4]
    assert m["precision_topn"]["precision"] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])


def test_metrics_do_not_depend_on_query_blocking() -> None:
    rng = np.random.default_rng(1)
    q, d = to_signs(rng.normal(size=(1100, 16))), to_signs(rng.normal(size=(300, 16)))
    ql, dl = rng.integers(0, 2, (1100, 4)), rng.integers(0, 2, (300, 4))
    whole = evaluate_codes(q, d, ql, dl)
    halves = [evaluate_codes(q[s], d, ql[s], dl) for s in (slice(0, 550), slice(550, None))]
    counts = [h["queries"] - h["queries_without_relevant"] for h in halves]
    expected = sum(h["mAP"] * c for h, c in zip(halves, counts, strict=True)) / sum(counts)
    assert whole["mAP"] == pytest.approx(expected)


def test_packed_codes_round_trip_and_match_faiss_hamming_distances() -> None:
    rng = np.random.default_rng(2)
    a, b = to_signs(rng.normal(size=(5, 24))), to_signs(rng.normal(size=(9, 24)))
    assert np.array_equal(unpack_signs(pack_signs(a), 24), a)
    index = faiss.IndexBinaryFlat(24)
    index.add(pack_signs(b))
    distances, ids = index.search(pack_signs(a), 9)
    expected = hamming_distances(a, b)
    assert np.array_equal(np.take_along_axis(expected, ids, 1), distances)


def test_sign_rule_maps_zero_to_minus_one() -> None:
    assert to_signs(np.array([[-0.5, 0.0, 0.5]])).tolist() == [[-1, -1, 1]]


def test_dense_scores_rank_by_cosine_similarity_not_by_length() -> None:
    # Cosines to the query [1, 0]: 0.6, 1.0, −1.0, 0.8 → ranking 1, 3(rel), 0(rel), 2; item 2 is the longest.
    query = np.array([[2.0, 0.0]])
    database = np.array([[3.0, 4.0], [0.5, 0.0], [-9.0, 0.0], [4.0, 3.0]])
    labels = np.array([[0, 1], [1, 0], [1, 0], [0, 1]])
    m = evaluate_scores(query, database, np.array([[0, 1]]), labels, map_at=(1,), precision_at=(1, 2))
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["MAP@1"] == 0.0
    assert m["P@2"] == pytest.approx(0.5)
    assert m["queries"] == 1 and m["queries_without_relevant"] == 0
    assert "mAP_tie_averaged" not in m


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_scores_of_sign_codes_reproduce_the_hamming_protocol(seed: int) -> None:
    # For ±1 vectors, cosine = 1 − 2·Hamming/bits: the same ranking, ties broken by the same index rule,
    # and the same exclusion of queries without a relevant item; across query blocks too.
    rng = np.random.default_rng(seed)
    query, database = to_signs(rng.normal(size=(700, 16))), to_signs(rng.normal(size=(300, 16)))
    q_labels, db_labels = rng.random((700, 5)) < 0.15, rng.random((300, 5)) < 0.2
    codes = evaluate_codes(query, database, q_labels, db_labels, map_at=(5, 50), precision_at=(1, 10))
    dense = evaluate_scores(query, database, q_labels, db_labels, map_at=(5, 50), precision_at=(1, 10))
    assert codes["queries_without_relevant"] == dense["queries_without_relevant"] > 0
    for name in ("mAP", "MAP@5", "MAP@50", "P@1", "P@10"):
        assert dense[name] == pytest.approx(codes[name], abs=1e-12), name
