"""Binary semantic-index centers: nearest centers by Hamming distance, and fitting centers to codes.

The one implementation of binary K-means, used by the UDDH trainer (its semantic index, with e ≥ 1
centers per item) and by the index (centers for bundles without a learned head, and re-bucketing).
A center update is UDDH Eq. 16's discrete cyclic coordinate descent: minimise ‖B − C H‖² over
C ∈ {−1, 1} one center at a time; with one center per code it is the members' per-bit majority vote.
Ties keep the center's current bit. An empty center is re-seeded with the code farthest from its own
center, so no bucket is empty after fitting on at least k distinct codes. Assignment is Eq. 19: the
nearest centers by Hamming distance, ties by center index.
"""

from __future__ import annotations

import faiss
import numpy as np

from index.codes import pack_signs, unpack_signs


class CenterIndex:
    """Binary centers in a FAISS flat index, built once and searched by every routing call."""

    def __init__(self, centers: np.ndarray) -> None:
        self.centers = np.asarray(centers, dtype=np.int8)
        self.head_bytes = self.centers.shape[1] // 8
        self._index = faiss.IndexBinaryFlat(self.centers.shape[1])
        self._index.add(pack_signs(self.centers))

    def __len__(self) -> int:
        return len(self.centers)

    def nearest(self, signs: np.ndarray, top: int = 1) -> np.ndarray:
        """(n, top) indices of each {−1, +1} code's ``top`` nearest centers, nearest first, ties by index."""
        return self._search(pack_signs(signs), top)

    def route(self, packed: np.ndarray, probe: int = 1) -> np.ndarray:
        """(n, probe) nearest buckets of packed codes over their head bits (the first bytes, as packed)."""
        return self._search(np.ascontiguousarray(packed[:, : self.head_bytes]), probe)

    def _search(self, packed: np.ndarray, top: int) -> np.ndarray:
        _, order = self._index.search(packed, min(top, len(self.centers)))
        return order


def nearest_centers(signs: np.ndarray, centers: np.ndarray, top: int = 1) -> np.ndarray:
    """(n, top) indices of each code's ``top`` nearest centers, nearest first, ties by center index.

    A FAISS flat scan over the packed centers: memory stays O(n · top) even for millions of codes.
    """
    return CenterIndex(centers).nearest(signs, top)


def head_signs(packed: np.ndarray, head_bits: int) -> np.ndarray:
    """The head of packed codes (their first ``head_bits`` bits) as {−1, +1}."""
    return unpack_signs(packed[:, : head_bits // 8], head_bits)


def route(packed: np.ndarray, centers: np.ndarray, probe: int = 1) -> np.ndarray:
    """(n, probe) nearest buckets of packed codes, by Hamming distance over the centers' head bits."""
    return CenterIndex(centers).route(packed, probe)


def fit_centers(
    signs: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20, balance: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k binary centers (k, bits) int8 and each code's assignment, by alternating minimisation.

    ``balance`` (e.g. 1.5): while fitting, a center takes at most ``balance × n / k`` codes, the nearest
    ones, and the rest go to their next nearest center with room (:func:`capacity_assignment`), so that
    no center is fitted to a crowd; the returned assignment is still each code's nearest center, as the
    index routes."""
    signs = np.asarray(signs, dtype=np.int8)
    if not 0 < k <= len(signs):
        raise ValueError(f"cannot fit {k} centers on {len(signs)} codes")
    if balance is not None and balance < 1:
        raise ValueError(f"balance must be at least 1 (a center's share over the mean), got {balance}")
    centers = signs[rng.choice(len(signs), size=k, replace=False)].copy()
    capacity = None if balance is None else int(np.ceil(balance * len(signs) / k))

    def assign(centers: np.ndarray) -> np.ndarray:
        return (
            nearest_centers(signs, centers)[:, 0] if capacity is None else capacity_assignment(signs, centers, capacity)
        )

    assignment = assign(centers)
    for _ in range(iterations):
        centers = update_centers(signs, centers, assignment[:, None])
        centers, _ = reseed_empty_clusters(signs, centers, nearest_centers(signs, centers))
        new_assignment = assign(centers)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
    # served by the nearest center: the capacity-bounded assignment was for fitting only
    return centers, assignment if capacity is None else nearest_centers(signs, centers)[:, 0]


CAPACITY_CHOICES = 16  # centers a code may try, nearest first, before it stays with its nearest anyway


def capacity_assignment(signs: np.ndarray, centers: np.ndarray, capacity: int) -> np.ndarray:
    """Each code's center when no center takes more than ``capacity`` codes: in rounds, every code not yet
    placed asks its next nearest center, which keeps the nearest askers (ties by code index) while it has
    room. A code refused by its ``CAPACITY_CHOICES`` nearest centers stays with its nearest."""
    signs = np.asarray(signs, dtype=np.int8)
    choices = nearest_centers(signs, centers, min(CAPACITY_CHOICES, len(centers)))
    n, top = choices.shape
    bits = signs.shape[1]
    assignment = np.full(n, -1, dtype=np.int64)
    room = np.full(len(centers), capacity, dtype=np.int64)
    for round_ in range(top):
        asking = np.flatnonzero(assignment < 0)
        if not len(asking):
            break
        wanted = choices[asking, round_]
        distance = (bits - (signs[asking].astype(np.int32) * centers[wanted].astype(np.int32)).sum(1)) // 2
        order = np.lexsort((asking, distance, wanted))  # per center, nearest askers first
        wanted, asking = wanted[order], asking[order]
        first = np.searchsorted(wanted, wanted, side="left")
        place = np.arange(len(wanted)) - first < room[wanted]
        assignment[asking[place]] = wanted[place]
        np.subtract.at(room, wanted[place], 1)
    left = assignment < 0
    assignment[left] = choices[left, 0]
    return assignment


def center_sums(centers: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    """(C H)ᵀ: per item, the sum of its e assigned centers, (n, l^c) float64."""
    return np.asarray(centers, dtype=np.float64)[assignments].sum(axis=1)


def kmeans_loss(codes: np.ndarray, centers: np.ndarray, assignments: np.ndarray) -> float:
    """‖B^c − C H‖², the binary K-means error of Eq. 5."""
    return float(((np.asarray(codes, dtype=np.float64) - center_sums(centers, assignments)) ** 2).sum())


def update_centers(codes: np.ndarray, centers: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    """Eq. 16, one sweep over the k centers: c_i = sign(q_i − C_≠i H_≠i h_iᵀ) with Q = B^c Hᵀ.

    Each center is the exact minimiser of ‖B^c − C H‖² given the others (its bits are independent),
    so the sweep never increases the error. With e = 1 it is the per-bit majority vote of the members.
    Sums of ±1 codes and integer counts are exact in float64, so the result does not depend on the
    summation order.
    """
    c = np.asarray(centers, dtype=np.float64).copy()
    k = len(c)
    codes = np.asarray(codes, dtype=np.float64)
    q = np.zeros((k, codes.shape[1]))  # (k, l): member code sums
    for slot in assignments.T:
        np.add.at(q, slot, codes)
    slots = assignments.ravel()
    order = np.argsort(slots, kind="stable")
    bounds = np.searchsorted(slots[order], np.arange(k + 1))
    item_of_slot = order // assignments.shape[1]
    for i in range(k):
        members = item_of_slot[bounds[i] : bounds[i + 1]]
        shared = np.bincount(assignments[members].ravel(), minlength=k)  # row i of H Hᵀ
        shared[i] = 0
        others = np.flatnonzero(shared)
        arg = q[i] - shared[others] @ c[others]
        c[i] = np.where(arg > 0, 1.0, np.where(arg < 0, -1.0, c[i]))
    return c.astype(np.int8)


def reseed_empty_clusters(
    codes: np.ndarray, centers: np.ndarray, assignments: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Give every empty cluster a member: (centers, assignments), inputs untouched.

    The item farthest from its nearest assigned center, among items that can give up one of their
    assignment slots without emptying another cluster, becomes the empty cluster's center, and its last
    such slot moves there (nearest first, at distance 0)."""
    centers, assignments = np.array(centers, dtype=np.int8), np.array(assignments, dtype=np.int64)
    k = len(centers)
    for empty in np.flatnonzero(np.bincount(assignments.ravel(), minlength=k) == 0):
        sizes = np.bincount(assignments.ravel(), minlength=k)
        movable = sizes[assignments] > 1  # slots whose cluster keeps another member
        misfit = np.where(movable.any(1), (codes != centers[assignments[:, 0]]).sum(1), -1)
        item = int(np.argmax(misfit))
        slot = int(np.flatnonzero(movable[item])[-1])
        centers[empty] = codes[item]
        assignments[item] = np.concatenate(([empty], np.delete(assignments[item], slot)))
    return centers, assignments
