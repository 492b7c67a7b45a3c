"""Binary semantic-index centers: nearest centers by Hamming distance, and fitting centers to codes.

Fitting alternates assignment (each code to its nearest center) and a bit-wise center update. With
one center per code, minimising ‖B − C H‖² over C ∈ {−1, 1} bit by bit (UDDH Eq. 16's discrete
cyclic coordinate descent) has the closed form "sign of the members' bit sum", a majority vote; ties
keep the center's current bit. A center left with no member is re-seeded with the code farthest from
its own center, so no bucket is empty after fitting on at least k distinct codes.
"""

from __future__ import annotations

import faiss
import numpy as np

from training.codes import pack_signs, unpack_signs


def nearest_centers(signs: np.ndarray, centers: np.ndarray, top: int = 1) -> np.ndarray:
    """(n, top) indices of each code's ``top`` nearest centers, nearest first, ties by center index.

    A FAISS flat scan over the packed centers: memory stays O(n · top) even for millions of codes.
    """
    index = faiss.IndexBinaryFlat(centers.shape[1])
    index.add(pack_signs(centers))
    _, order = index.search(pack_signs(signs), min(top, len(centers)))
    return order


def head_signs(packed: np.ndarray, head_bits: int) -> np.ndarray:
    """The head of packed codes (their first ``head_bits`` bits) as {−1, +1}."""
    return unpack_signs(packed[:, : head_bits // 8], head_bits)


def route(packed: np.ndarray, centers: np.ndarray, probe: int = 1) -> np.ndarray:
    """(n, probe) nearest buckets of packed codes, by Hamming distance over the centers' head bits."""
    return nearest_centers(head_signs(packed, centers.shape[1]), centers, probe)


def fit_centers(
    signs: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """k binary centers (k, bits) int8 and each code's assignment, by alternating minimisation."""
    signs = np.asarray(signs, dtype=np.int8)
    if not 0 < k <= len(signs):
        raise ValueError(f"cannot fit {k} centers on {len(signs)} codes")
    centers = signs[rng.choice(len(signs), size=k, replace=False)].copy()
    assignment = nearest_centers(signs, centers)[:, 0]
    for _ in range(iterations):
        centers = _majority_centers(signs, assignment, centers)
        centers, assignment = _reseed_empty(signs, centers, nearest_centers(signs, centers)[:, 0])
        new_assignment = nearest_centers(signs, centers)[:, 0]
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
    return centers, assignment


def _majority_centers(signs: np.ndarray, assignment: np.ndarray, centers: np.ndarray) -> np.ndarray:
    k = len(centers)
    sums = np.stack([np.bincount(assignment, weights=signs[:, j], minlength=k) for j in range(signs.shape[1])], 1)
    return np.where(sums > 0, 1, np.where(sums < 0, -1, centers)).astype(np.int8)


def _reseed_empty(signs: np.ndarray, centers: np.ndarray, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centers = centers.copy()
    for empty in np.flatnonzero(np.bincount(assignment, minlength=len(centers)) == 0):
        own = (signs != centers[assignment]).sum(1)
        sizes = np.bincount(assignment, minlength=len(centers))
        own[sizes[assignment] <= 1] = -1  # never take the only member of another bucket
        farthest = int(np.argmax(own))
        centers[empty] = signs[farthest]
        assignment = assignment.copy()
        assignment[farthest] = empty
    return centers, assignment
