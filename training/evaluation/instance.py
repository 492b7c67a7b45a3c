"""Instance-level retrieval metrics: does a query find *its own* pair, not only items of its category?

A query's targets are database items (its own pair; with duplicate-aware matching, every item whose text
is identical to the pair's). A ranking is a score per database item, higher first: ``−Hamming distance``
for codes, the re-ranker's score for a re-ranked list; ranks with ties, R@K and P@K are
``index.retrieval_metrics``'s, which the service's quality gate uses too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.bundle import Bundle
from index.centers import route
from index.codes import hamming_distances, pack_signs, to_signs
from index.retrieval_metrics import RECALL_AT, category_precision, first_target_ranks, recall_table
from training.featurize.pipeline import FeatureSet

_BLOCK = 256  # queries per block: memory O(block × database)


def instance_recall(score_fn, n_queries: int, targets_fn, recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """:func:`recall_table` of a ranking given block-wise: ``score_fn(rows)`` → (len(rows), nd) scores,
    ``targets_fn(rows)`` → the same shape of bool targets."""
    blocks = []
    for start in range(0, n_queries, _BLOCK):
        rows = np.arange(start, min(start + _BLOCK, n_queries))
        blocks.append(first_target_ranks(np.asarray(score_fn(rows)), np.asarray(targets_fn(rows), dtype=bool)))
    return recall_table(_joined(blocks), recall_at)


def _joined(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Block-wise :func:`first_target_ranks` results as one."""
    return {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}


def pair_targets(query_items: np.ndarray, database_items: np.ndarray):
    """Targets = the query's own item in the database (matched by item number)."""
    query_items, database_items = np.asarray(query_items), np.asarray(database_items)

    def targets(rows: np.ndarray) -> np.ndarray:
        return query_items[rows][:, None] == database_items[None, :]

    return targets


def duplicate_targets(query_groups: np.ndarray, database_groups: np.ndarray):
    """Targets = every database item in the query pair's duplicate group (e.g. identical texts)."""
    return pair_targets(query_groups, database_groups)


def text_groups(texts: Sequence[str]) -> np.ndarray:
    """Group number per item: items with identical text share one (OpenClipart repeats texts a lot)."""
    numbers: dict[str, int] = {}
    return np.array([numbers.setdefault(text, len(numbers)) for text in texts], dtype=np.int64)


def code_statistics(database_signs: np.ndarray, query_signs: np.ndarray, pairs: np.ndarray) -> dict[str, float]:
    """How much a code tells items apart: distinct codes, and the mean number of database items at the
    distance between a query and its own pair (``pairs[q]`` its row in the database, −1 if absent)."""
    database_signs = np.asarray(database_signs, dtype=np.int8)
    packed = np.packbits(database_signs > 0, axis=1)
    distinct = len({row.tobytes() for row in packed})
    keep = pairs >= 0
    queries, own_rows = np.asarray(query_signs)[keep], pairs[keep]
    group_sizes = []
    for start in range(0, len(queries), _BLOCK):
        distances = hamming_distances(queries[start : start + _BLOCK], database_signs)
        own = distances[np.arange(len(distances)), own_rows[start : start + _BLOCK]]
        group_sizes.append((distances == own[:, None]).sum(axis=1))
    tie = np.concatenate(group_sizes) if group_sizes else np.zeros(0)
    return {
        "distinct_codes": distinct,
        "items": len(database_signs),
        "distinct_per_item": distinct / max(len(database_signs), 1),
        "mean_tie_group_at_pair": float(tie.mean()) if len(tie) else 0.0,
    }


# -- the served ranking of a bundle, and its table --------------------------------------------------------------

_RERANKED = 1e6  # a re-ranked candidate's score offset: every candidate ranks above every other item


def served_scores(query_real: np.ndarray, database_signs: np.ndarray, candidates: int | None):
    """``score_fn(rows)`` ranking the database as the index serves it with every bucket probed: Hamming
    order (score −distance), or, with a re-ranker of ``candidates``, the top ``candidates`` and the rest of
    their last tie group first, ordered by the asymmetric score (``index.rerank``), then the others."""
    db = np.asarray(database_signs, dtype=np.float32)
    real = np.asarray(query_real, dtype=np.float32)

    def scores(rows: np.ndarray) -> np.ndarray:
        distances = hamming_distances(to_signs(real[rows]), database_signs)
        if candidates is None:
            return -distances.astype(np.float64)
        cut = min(candidates, db.shape[0])
        bound = np.partition(distances, cut - 1, axis=1)[:, cut - 1 : cut]  # the cut-th nearest distance
        asym = real[rows] @ db.T  # index.rerank.asymmetric_scores against the whole database at once
        return np.where(distances <= bound, _RERANKED + asym, -distances.astype(np.float64))

    return scores


def instance_table(
    real: dict[str, np.ndarray],
    labels: np.ndarray,
    query: np.ndarray,
    groups: np.ndarray,
    candidates: int | None,
    name: str,
) -> list[dict]:
    """Rows (direction × database) of instance recall, duplicate-aware recall and category P@10 for held-out
    ``query`` items against (a) all items and (b) the held-out items only, ranked as served. ``real``: each
    modality's real codes of every item; ``groups``: duplicate groups (identical texts)."""
    from training.evaluation.metrics import relevance  # the label rule of every category metric

    signs = {m: to_signs(r) for m, r in real.items()}
    rows = []
    for database_name, database in (("all", np.arange(len(labels))), ("held-out", np.asarray(query))):
        for direction, (source, target) in (("t2i", ("text", "image")), ("i2t", ("image", "text"))):
            score_fn = served_scores(real[source][query], signs[target][database], candidates)
            targets = {"own": pair_targets(query, database),
                       "same text": duplicate_targets(groups[query], groups[database])}  # fmt: skip
            relevant = relevance(labels[query], labels[database])
            ranks: dict[str, list[dict[str, np.ndarray]]] = {kind: [] for kind in targets}
            precision, rng = [], np.random.default_rng(0)
            for start in range(0, len(query), _BLOCK):  # each block's scores serve all three measures
                block = np.arange(start, min(start + _BLOCK, len(query)))
                scores = score_fn(block)
                for kind, targets_fn in targets.items():
                    ranks[kind].append(first_target_ranks(scores, targets_fn(block)))
                precision.append(category_precision(scores, relevant[block], 10, rng))
            own, same_text = (recall_table(_joined(ranks[kind])) for kind in targets)
            rows.append(
                {"bundle": name, "direction": direction, "database": database_name}
                | {key: round(own[key], 4) for key in ("R@1", "R@5", "R@10", "R@50", "median_rank")}
                | {"R@10 (same text)": round(same_text["R@10"], 4),
                   "category P@10": round(float(np.concatenate(precision).mean()), 4)}
            )  # fmt: skip
    return rows


def served_real_codes(bundle: Bundle, features: FeatureSet) -> dict[str, np.ndarray]:
    """Every item's real codes by the bundle's own graphs (the codes it serves), per modality."""
    return {m: bundle.real_codes(m, getattr(features, m)) for m in ("image", "text")}


def bundle_instance_table(
    bundle: Bundle, real: dict[str, np.ndarray], features: FeatureSet, groups: np.ndarray, name: str
) -> list[dict]:
    """:func:`instance_table` of a bundle's served codes (:func:`served_real_codes`) and its re-ranker."""
    reranker = bundle.manifest.reranker
    candidates = None if reranker is None else reranker.candidates
    return instance_table(real, features.labels, features.split.query, groups, candidates, name)


def bundle_code_statistics(bundle: Bundle, real: dict[str, np.ndarray], features: FeatureSet, name: str) -> dict:
    """Distinct image codes, the mean tie group at a held-out text's own image, and the image buckets' sizes
    (every item routed to its nearest center, as the index does)."""
    signs = {m: to_signs(r) for m, r in real.items()}
    query = features.split.query
    statistics = code_statistics(signs["image"], signs["text"][query], np.asarray(query))
    sizes = np.bincount(route(pack_signs(signs["image"]), bundle.centers)[:, 0], minlength=len(bundle.centers))
    return {"bundle": name} | {k: round(v, 4) if isinstance(v, float) else v for k, v in statistics.items()} | {
        "buckets": len(sizes), "largest bucket / mean": round(float(sizes.max() / sizes.mean()), 2),
        "empty buckets": int((sizes == 0).sum())}  # fmt: skip
