"""The short-query measurements: natural queries as the issue asks for them, word matching, top precision."""

from __future__ import annotations

import numpy as np

from training.evaluation.natural_queries import NATURAL_QUERIES, TOP, hamming_order, top_precision, word_matches


def test_there_are_at_least_sixty_queries_of_one_to_four_words() -> None:
    assert len(NATURAL_QUERIES) >= 60
    assert all(1 <= len(query.split()) <= 4 for query in NATURAL_QUERIES)


def test_word_matches_need_every_word_whole_or_plural() -> None:
    texts = ["Red apples on a tree", "a red car", "category of cats", "Apple", "catalogue"]
    assert word_matches("red apple", texts).tolist() == [0]
    assert word_matches("cat", texts).tolist() == [2]  # "cats" is a plural; "catalogue" is another word
    assert word_matches("zebra", texts).size == 0


def test_top_precision_is_the_share_of_relevant_rows_among_the_first_ten() -> None:
    relevant = np.zeros((2, 30), dtype=bool)
    relevant[0, :5] = True  # query 0: rows 0-4 relevant
    relevant[1, 20:] = True  # query 1: rows 20-29 relevant
    order = np.tile(np.arange(30), (2, 1))
    assert top_precision(order, relevant).tolist() == [5 / TOP, 0.0]
    assert top_precision(order[:, ::-1], relevant).tolist() == [0.0, 1.0]


def test_hamming_order_breaks_ties_by_database_index() -> None:
    database = np.array([[1, 1], [-1, -1], [1, 1], [1, -1]], dtype=np.int8)
    assert hamming_order(np.array([[1, 1]], dtype=np.int8), database).tolist() == [[0, 2, 3, 1]]
