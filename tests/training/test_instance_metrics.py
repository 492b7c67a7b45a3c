"""Instance-level metrics: ranks of a query's own pair with ties in expectation, and their bounds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from index.retrieval_metrics import first_target_ranks, recall_table
from training.evaluation.instance import (
    code_statistics,
    instance_recall,
    pair_targets,
    served_scores,
    text_groups,
)


def _brute_force_recall(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Every order of each tie group, counted: the exact expected R@k."""
    hits = []
    for row, mask in zip(scores, targets, strict=True):
        orders = [sorted(range(len(row)), key=lambda i, p=p: (-row[i], p.index(i))) for p in
                  itertools.permutations(range(len(row)))]  # fmt: skip
        hits.append(np.mean([mask[order[:k]].any() for order in orders]))
    return float(np.mean(hits))


def test_expected_recall_counts_every_order_of_the_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(6, 6)).astype(float)
    targets = np.zeros((6, 6), dtype=bool)
    targets[np.arange(6), rng.integers(0, 6, 6)] = True
    targets[0, [1, 4]] = True  # two targets: the first of them counts
    table = recall_table(first_target_ranks(scores, targets), recall_at=(1, 2, 3))
    for k in (1, 2, 3):
        assert table[f"R@{k}"] == pytest.approx(_brute_force_recall(scores, targets, k))
        assert table[f"R@{k}_pessimistic"] <= table[f"R@{k}"] <= table[f"R@{k}_optimistic"]


def test_a_pair_tied_with_everything_has_the_middle_rank_and_recall_in_proportion() -> None:
    scores = np.zeros((1, 100))
    targets = np.zeros((1, 100), dtype=bool)
    targets[0, 37] = True
    table = recall_table(first_target_ranks(scores, targets))
    assert table["median_rank"] == pytest.approx(50.5)
    assert table["R@10"] == pytest.approx(0.10)
    assert table["R@10_optimistic"] == 1.0 and table["R@10_pessimistic"] == 0.0


def test_duplicate_texts_make_every_identical_item_a_hit() -> None:
    groups = text_groups(["a red apple", "a lemon", "a red apple", "a guitar"])
    assert groups.tolist() == [0, 1, 0, 2]
    scores = np.array([[0.0, 5.0, 3.0, 1.0]])  # item 2 (same text as item 0) ranks second
    own = instance_recall(lambda rows: scores[rows], 1, pair_targets(np.array([0]), np.arange(4)), (1, 2))
    same_text = instance_recall(lambda rows: scores[rows], 1, pair_targets(groups[[0]], groups), (1, 2))
    assert own["median_rank"] == 4 and own["R@2"] == 0
    assert same_text["median_rank"] == 2 and same_text["R@2"] == 1


def test_served_ranking_puts_reranked_candidates_first_in_score_order() -> None:
    database = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, 1], [-1, -1, -1, -1]], dtype=np.int8)
    query_real = np.array([[0.9, 0.8, 0.1, 0.7]])  # sign (1, 1, 1, 1): items 1 and 2 tie at distance 1
    hamming = served_scores(query_real, database, None)(np.array([0]))[0]
    assert hamming[1] == hamming[2]  # a tie, which Hamming order leaves to storage order
    reranked = served_scores(query_real, database, 2)(np.array([0]))[0]
    assert np.argsort(-reranked).tolist() == [0, 2, 1, 3]  # the query is surer of bit 3 than of bit 2


def test_code_statistics_count_distinct_codes_and_the_tie_group_at_the_pair() -> None:
    database = np.array([[1, 1], [1, 1], [1, -1], [-1, -1]], dtype=np.int8)
    stats = code_statistics(database, database[[0, 3]], np.array([0, 3]))
    assert stats["distinct_codes"] == 3
    assert stats["mean_tie_group_at_pair"] == pytest.approx((2 + 1) / 2)
