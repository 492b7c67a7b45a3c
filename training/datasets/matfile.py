"""Feature-matrix benchmarks of the cross-modal hashing literature, as MATLAB ``.mat`` files.

Two layouts are read, MATLAB v5 (scipy) or v7.3 (HDF5, h5py; its arrays come transposed):
- pre-split: one file with ``I_tr, T_tr, L_tr`` (retrieval set, also the training set) and
  ``I_te, T_te, L_te`` (queries), as distributed with SCRATCH/BATCH/DSFH-style code;
- DCMH style: three files ``<prefix>-iall.mat``, ``-yall.mat``, ``-lall.mat`` (keys ``IAll``, ``YAll``,
  ``LAll``), split here with a seed: ``n_query`` queries, the rest the database, ``n_train`` training
  items drawn from it (DCMH's MIRFlickr protocol: 2,000 / rest / 10,000).
Feature matrices are oriented (n, d) by matching their sample count to the label matrix.
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


def _read(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if h5py.is_hdf5(path):  # MATLAB v7.3
        with h5py.File(path, "r") as f:
            data = {k: np.asarray(f[k]).T for k in keys if k in f}
    else:
        data = scipy.io.loadmat(path, variable_names=list(keys))
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (expected {list(keys)})")
    return {k: np.asarray(data[k]) for k in keys}


def _rows(matrix: np.ndarray, n: int, what: str) -> np.ndarray:
    """Orient a 2-D feature matrix so samples are rows."""
    if matrix.ndim == 2 and matrix.shape[0] != n and matrix.shape[1] == n:
        matrix = matrix.T
    if matrix.ndim != 2 or matrix.shape[0] != n:
        raise ValueError(f"{what}: shape {matrix.shape} does not match {n} labelled samples")
    return matrix.astype(np.float32)


def _labels(matrix: np.ndarray) -> np.ndarray:
    labels = np.asarray(matrix)
    if labels.ndim == 2 and labels.shape[0] < labels.shape[1]:
        labels = labels.T  # labels are (c, n) in column-major files; n ≫ c on every benchmark
    return (labels > 0).astype(np.uint8)


def load_mat(path: str | Path, n_query: int = 2000, n_train: int | None = 10000, seed: int = 0) -> CrossModalDataset:
    """A pre-split ``.mat`` file, or the prefix of a DCMH ``-iall/-yall/-lall`` triple."""
    path = Path(path)
    if path.is_file():
        data = _read(path, PRE_SPLIT_KEYS)
        label_tr, label_te = _labels(data["L_tr"]), _labels(data["L_te"])
        n_tr, n_te = len(label_tr), len(label_te)
        images = np.concatenate([_rows(data["I_te"], n_te, "I_te"), _rows(data["I_tr"], n_tr, "I_tr")])
        texts = np.concatenate([_rows(data["T_te"], n_te, "T_te"), _rows(data["T_tr"], n_tr, "T_tr")])
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
        arrays = {part: _read(files[part], (key,))[key] for part, (_, key) in DCMH_SUFFIXES.items()}
        labels = _labels(arrays["labels"])
        images = _rows(arrays["images"], len(labels), "IAll")
        texts = _rows(arrays["texts"], len(labels), "YAll")
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
