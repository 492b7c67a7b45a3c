"""The UDDH paper's protocol on Wikipedia: the two readings of MAP@k told apart (ours, over the top k; the
DCMH-family ``calc_map_k``, over the first k relevant items of the whole ranking)."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.metrics import average_precision_at, average_precision_first_relevant


def _calc_map_k_row(ranked: np.ndarray, k: int) -> float:
    """A line-by-line transcription of DCMH's calc_map_k for one ranked relevance row."""
    total = min(k, int(ranked.sum()))
    if total == 0:
        return 0.0
    count = np.arange(1, total + 1)
    tindex = np.flatnonzero(ranked)[:total] + 1.0
    return float(np.mean(count / tindex))


def test_first_relevant_map_on_a_hand_worked_row() -> None:
    ranked = np.array([[0, 1, 0, 1, 1]], dtype=bool)
    assert average_precision_first_relevant(ranked, 3)[0] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert average_precision_at(ranked, 3)[0] == pytest.approx(1 / 2)  # ours: only position 2 is in the top 3


@pytest.mark.parametrize("k", [1, 5, 50])
def test_first_relevant_map_matches_calc_map_k(k: int) -> None:
    rng = np.random.default_rng(k)
    ranked = rng.random((40, 120)) < rng.uniform(0.02, 0.5, (40, 1))
    ranked[0] = False  # no relevant item: 0, as calc_map_k's skipped query would add nothing
    expected = [_calc_map_k_row(row, k) for row in ranked]
    np.testing.assert_allclose(average_precision_first_relevant(ranked, k), expected, rtol=1e-12)
