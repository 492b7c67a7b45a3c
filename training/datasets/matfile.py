"""Feature-matrix benchmarks of the cross-modal hashing literature, as MATLAB ``.mat`` files.

Two layouts are read, MATLAB v5 (scipy) or v7.3 (HDF5, h5py; its arrays come transposed):
- pre-split: one file with ``I_tr, T_tr, L_tr`` (retrieval set, also the training set) and
  ``I_te, T_te, L_te`` (queries), as distributed with SCRATCH/BATCH/DSFH-style code;
- DCMH style: three files ``<prefix>-iall.mat``, ``-yall.mat``, ``-lall.mat`` (keys ``IAll``, ``YAll``,
  ``LAll``), split here with a seed: ``n_query`` queries, the rest the database, ``n_train`` training
  items drawn from it (DCMH's MIRFlickr protocol: 2,000 / rest / 10,000).
Feature matrices are oriented (n, d) by matching their sample count to the label matrix.

Labels come in two layouts, told apart by shape and values (:func:`label_matrices`): a single column (or
row) of class indices 1..C, one per item (Wikipedia's ``L_tr``) → one-hot; a 0/1 matrix of two or more
columns → multi-label. Anything else (a 0/1 single column, which could be one binary label or 0-based
indices; ±1, counts, fractions) is refused rather than guessed, and so is a labelled set in which every
item carries the same labels: every item would be relevant to every query and every metric would be 1.0.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io

from training.datasets.base import CrossModalDataset, DatasetNotFoundError, Split, seeded_split

PRE_SPLIT_KEYS = ("I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te")
DCMH_SUFFIXES = {
    "images": ("-iall.mat", "IAll"),
    "texts": ("-yall.mat", "YAll"),
    "labels": ("-lall.mat", "LAll"),
}


def read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if h5py.is_hdf5(path):  # MATLAB v7.3
        with h5py.File(path, "r") as f:
            data = {k: np.asarray(f[k]).T for k in keys if k in f}
    else:
        data = scipy.io.loadmat(path, variable_names=list(keys))
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (expected {list(keys)})")
    return {k: np.asarray(data[k]) for k in keys}


def sample_rows(matrix: np.ndarray, n: int, what: str) -> np.ndarray:
    """Orient a 2-D feature matrix so samples are rows."""
    if matrix.ndim == 2 and matrix.shape[0] != n and matrix.shape[1] == n:
        matrix = matrix.T
    if matrix.ndim != 2 or matrix.shape[0] != n:
        raise ValueError(f"{what}: shape {matrix.shape} does not match {n} labelled samples")
    return matrix.astype(np.float32)


def _label_layout(matrix: np.ndarray, what: str) -> np.ndarray:
    """(n, c) 0/1 labels, or (n,) class indices ≥ 1 for a single column; what cannot be told is refused."""
    labels = np.asarray(matrix)
    if labels.ndim == 2 and labels.shape[0] < labels.shape[1]:
        labels = labels.T  # labels are (c, n) in column-major files; n ≫ c on every benchmark
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or labels.size == 0:
        raise ValueError(f"{what}: labels of shape {np.shape(matrix)} are neither a column nor a matrix")
    if not np.isfinite(labels).all():
        raise ValueError(f"{what}: labels contain NaN or inf")
    if labels.ndim == 1:
        if np.array_equal(labels, np.round(labels)) and labels.min() >= 1:
            return labels.astype(np.int64)
        raise ValueError(
            f"{what}: a single label column must hold class indices 1..C; values {np.unique(labels)[:5]} "
            "could be one binary label or 0-based indices, so they are refused (store a 0/1 matrix instead)"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"{what}: a label matrix must be 0/1 (one column per label), got values {np.unique(labels)[:5]}"
        )
    return labels.astype(np.uint8)


def label_matrices(matrices: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Multi-hot (n, c) uint8 label matrices, one per named part, with the same columns in all parts.

    Index columns are one-hot over 1..C, C the largest index of any part; every part must have the same
    layout. Refused: layouts it cannot tell apart (see the module notes), and parts that together give
    every item the same labels.
    """
    parts = {what: _label_layout(m, what) for what, m in matrices.items()}
    if len({p.ndim for p in parts.values()}) > 1:
        raise ValueError(f"label parts {list(parts)} mix class-index columns and 0/1 matrices")
    if next(iter(parts.values())).ndim == 1:
        classes = max(int(p.max()) for p in parts.values())
        parts = {what: np.eye(classes, dtype=np.uint8)[p - 1] for what, p in parts.items()}
    if len({p.shape[1] for p in parts.values()}) > 1:
        raise ValueError(f"label parts have different numbers of labels: { {w: p.shape[1] for w, p in parts.items()} }")
    together = np.concatenate(list(parts.values()))
    if (together == together[0]).all():
        raise ValueError(
            f"every item of {list(parts)} has the same labels {together[0].tolist()}: every item would be "
            "relevant to every query and every metric 1.0; check the label layout"
        )
    return list(parts.values())


def load_mat(path: str | Path, n_query: int = 2000, n_train: int | None = 10000, seed: int = 0) -> CrossModalDataset:
    """A pre-split ``.mat`` file, or the prefix of a DCMH ``-iall/-yall/-lall`` triple."""
    path = Path(path)
    if path.is_file():
        data = read_arrays(path, PRE_SPLIT_KEYS)
        label_tr, label_te = label_matrices({"L_tr": data["L_tr"], "L_te": data["L_te"]})
        n_tr, n_te = len(label_tr), len(label_te)
        images = np.concatenate([sample_rows(data["I_te"], n_te, "I_te"), sample_rows(data["I_tr"], n_tr, "I_tr")])
        texts = np.concatenate([sample_rows(data["T_te"], n_te, "T_te"), sample_rows(data["T_tr"], n_tr, "T_tr")])
        labels = np.concatenate([label_te, label_tr])
        database = np.arange(n_te, n_te + n_tr)
        train = (
            database
            if n_train is None or n_train >= n_tr
            else np.sort(np.random.default_rng(seed).choice(database, n_train, replace=False))
        )
        split = Split(query=np.arange(n_te), database=database, train=train)
        name = path.stem
    else:
        files = {part: Path(f"{path}{suffix}") for part, (suffix, _) in DCMH_SUFFIXES.items()}
        absent = [str(f) for f in files.values() if not f.is_file()]
        if absent:
            raise DatasetNotFoundError(
                f"no .mat dataset at {path}: expected a pre-split file with {', '.join(PRE_SPLIT_KEYS)} "
                f"or the DCMH files {', '.join(absent)}"
            )
        arrays = {part: read_arrays(files[part], (key,))[key] for part, (_, key) in DCMH_SUFFIXES.items()}
        [labels] = label_matrices({"LAll": arrays["labels"]})
        images = sample_rows(arrays["images"], len(labels), "IAll")
        texts = sample_rows(arrays["texts"], len(labels), "YAll")
        split = seeded_split(len(labels), n_query, n_train, seed)
        name = path.name
    return CrossModalDataset(
        name=name,
        images=images,
        texts=texts,
        labels=labels,
        label_names=[f"label{j}" for j in range(labels.shape[1])],
        split=split,
        image_kind="features",
        text_kind="features",
    )
