"""Hamming-ranking retrieval metrics for cross-modal hashing.

Relevance: a database item is relevant to a query when they share at least one label.

Ties: Hamming distances take only bits + 1 values, so rankings are full of ties. The *ranked* metrics
break ties by database index (a stable sort), as the reference DCMH/SSAH evaluation code does. Because
that makes numbers depend on database order, :func:`tie_averaged_map` also gives the expected AP when
tied items are ordered uniformly at random (McSherry & Najork, ECIR 2008), in closed form.

Queries with no relevant item in the database carry no information about the ranking: they are left
out of every mean and counted in ``queries_without_relevant`` (DCMH's code would count them as AP 0).
MAP@k divides by the number of relevant items *retrieved in the top k*; a query with none in its top k
scores 0 there. The UDDH paper does not define its MAP@50. The ``calc_map_k`` of the DCMH / DJSRH /
JDSH / DGCPN code (the deep baselines of UDDH's Table III) is another quantity: the mean precision at
the positions of the first min(k, R) relevant items of the *whole* ranking, R the query's relevant
count (:func:`average_precision_first_relevant`); it is lower wherever fewer than k of the top k are
relevant (docs/results_wikipedia.md compares both).
"""

from __future__ import annotations

import numpy as np

from index.codes import hamming_distances

_QUERY_BLOCK = 512  # queries per block, bounding memory at O(block × database)


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(nq, nd) bool: shares at least one label."""
    return (np.asarray(query_labels, np.float32) @ np.asarray(db_labels, np.float32).T) > 0


def _ranked(dist: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Relevance in ranked order, ties broken by database index (stable sort)."""
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(rel, order, axis=1)


def average_precision_at(ranked_rel: np.ndarray, k: int) -> np.ndarray:
    """AP over the top k of each ranked relevance row (k = full length gives ordinary AP)."""
    top = ranked_rel[:, :k].astype(np.float64)
    hits = np.cumsum(top, axis=1)
    precision = hits / np.arange(1, top.shape[1] + 1)
    found = hits[:, -1]
    return np.divide((precision * top).sum(1), found, out=np.zeros_like(found), where=found > 0)


def average_precision_first_relevant(ranked_rel: np.ndarray, k: int) -> np.ndarray:
    """``calc_map_k`` of the DCMH code family: mean precision at the first min(k, R) relevant positions
    of each full ranked relevance row (R its relevant count; 0 for a row with none)."""
    hits = np.cumsum(ranked_rel, axis=1)
    total = np.minimum(k, hits[:, -1]).astype(np.float64)
    first = ranked_rel & (hits <= total[:, None])
    precision = hits / np.arange(1, ranked_rel.shape[1] + 1)
    return np.divide((precision * first).sum(1), total, out=np.zeros_like(total), where=total > 0)


def _distance_histograms(dist: np.ndarray, rel: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query and Hamming distance: how many items (n) and how many relevant items (r)."""
    nq = dist.shape[0]
    levels = bits + 1
    flat = (dist + levels * np.arange(nq)[:, None]).ravel()
    n = np.bincount(flat, minlength=nq * levels).reshape(nq, levels).astype(np.float64)
    r = np.bincount(flat, weights=rel.ravel(), minlength=nq * levels).reshape(nq, levels)
    return n, r


def _expected_ap(n: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Expected AP under uniformly random order within each Hamming-distance tie group.

    A group of n items with r relevant, after s items of which R are relevant, contributes
    (r/n) Σ_{i=1..n} (R + 1 + (i−1)(r−1)/(n−1)) / (s + i): position s+i is relevant with probability
    r/n, and given that, the expected number of relevant items before it inside the group is
    (i−1)(r−1)/(n−1). The sums reduce to harmonic numbers.
    """
    s = np.cumsum(n, axis=1) - n
    before = np.cumsum(r, axis=1) - r
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n[0].sum()) + 1))])
    dh = harmonic[(s + n).astype(np.int64)] - harmonic[s.astype(np.int64)]
    slope = np.divide(r - 1, n - 1, out=np.zeros_like(r), where=n > 1)
    group_sum = (before + 1) * dh + slope * (n - (s + 1) * dh)
    contribution = np.divide(r, n, out=np.zeros_like(r), where=n > 0) * group_sum
    total = r.sum(1)
    return np.divide(contribution.sum(1), total, out=np.zeros(len(n)), where=total > 0)


def _blocks(nq: int):
    for start in range(0, nq, _QUERY_BLOCK):
        yield slice(start, min(nq, start + _QUERY_BLOCK))


def _ranked_scores(
    ranked: np.ndarray, map_at: tuple[int, ...], precision_at: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-query mAP, MAP@k and P@k of ranked relevance rows, and the cumulative hits they came from."""
    nd = ranked.shape[1]
    scores = {"mAP": average_precision_at(ranked, nd)}
    scores |= {f"MAP@{k}": average_precision_at(ranked, k) for k in map_at}
    hits = np.cumsum(ranked, axis=1)
    scores |= {f"P@{k}": hits[:, k - 1] / k for k in precision_at if k <= nd}
    return scores, hits


def evaluate_scores(
    query_vectors: np.ndarray,
    db_vectors: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    map_at: tuple[int, ...] = (50,),
    precision_at: tuple[int, ...] = (10, 50, 100),
) -> dict:
    """The ranked protocol metrics (``mAP``, ``MAP@k``, ``P@k``) for one direction, ranking the database
    by cosine similarity of real-valued vectors: the dense float baseline hashing is judged against.

    Same relevance, query exclusion and tie rule (database index) as :func:`evaluate_codes`; float
    scores have no Hamming tie groups, so there is no tie-averaged mAP and no radius curve.
    """
    q = query_vectors / np.maximum(np.linalg.norm(query_vectors, axis=1, keepdims=True), 1e-12)
    d = db_vectors / np.maximum(np.linalg.norm(db_vectors, axis=1, keepdims=True), 1e-12)
    sums: dict[str, float] = {}
    valid_total = 0
    for block in _blocks(len(q)):
        rel = relevance(query_labels[block], db_labels)
        valid = rel.any(1)
        valid_total += int(valid.sum())
        ranked = _ranked(-(q[block][valid] @ d.T), rel[valid])
        for name, values in _ranked_scores(ranked, map_at, precision_at)[0].items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
    result: dict = {name: total / max(valid_total, 1) for name, total in sums.items()}
    result["queries"] = len(q)
    result["queries_without_relevant"] = len(q) - valid_total
    return result


def evaluate_codes(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    map_at: tuple[int, ...] = (50,),
    precision_at: tuple[int, ...] = (10, 50, 100),
    topn_points: int = 20,
) -> dict:
    """All protocol metrics for one retrieval direction, from {−1, +1} codes.

    Returns scalars (``mAP``, ``mAP_tie_averaged``, ``MAP@k``, ``P@k``), the precision–recall curve
    by Hamming radius (``pr_radius``), the precision@top-N curve (``precision_topn``) and counts.
    """
    bits = query_codes.shape[1]
    nd = len(db_codes)
    topn = np.unique(np.linspace(1, nd, topn_points).round().astype(int))
    sums: dict[str, float] = {}
    topn_sum = np.zeros(len(topn))
    radius_precision_sum = np.zeros(bits + 1)
    radius_precision_count = np.zeros(bits + 1)
    recall_sum = np.zeros(bits + 1)
    valid_total = 0
    for block in _blocks(len(query_codes)):
        dist = hamming_distances(query_codes[block], db_codes)
        rel = relevance(query_labels[block], db_labels)
        valid = rel.any(1)
        dist, rel = dist[valid], rel[valid]
        valid_total += int(valid.sum())
        ranked = _ranked(dist, rel)
        n, r = _distance_histograms(dist, rel, bits)
        scores, hits = _ranked_scores(ranked, map_at, precision_at)
        scores["mAP_tie_averaged"] = _expected_ap(n, r)
        for name, values in scores.items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        topn_sum += (hits[:, topn - 1] / topn).sum(0)
        # Hash lookup: everything within Hamming radius ρ is retrieved.
        retrieved, relevant_retrieved = np.cumsum(n, axis=1), np.cumsum(r, axis=1)
        has = retrieved > 0
        radius_precision_sum += np.where(has, relevant_retrieved / np.maximum(retrieved, 1), 0).sum(0)
        radius_precision_count += has.sum(0)
        recall_sum += (relevant_retrieved / rel.sum(1, keepdims=True)).sum(0)
    count = max(valid_total, 1)
    result: dict = {name: total / count for name, total in sums.items()}
    result["queries"] = len(query_codes)
    result["queries_without_relevant"] = len(query_codes) - valid_total
    result["pr_radius"] = {
        "radius": list(range(bits + 1)),
        "precision": (radius_precision_sum / np.maximum(radius_precision_count, 1)).tolist(),
        "recall": (recall_sum / count).tolist(),
    }
    result["precision_topn"] = {"n": topn.tolist(), "precision": (topn_sum / count).tolist()}
    return result
