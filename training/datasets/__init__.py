"""Dataset loaders behind one interface: ``load_dataset(spec)`` → :class:`CrossModalDataset`.

``spec`` is ``openclipart`` (the product corpus), ``wikipedia`` / ``wikipedia-tfidf`` (the Wikipedia
benchmark with LDA or tf-idf texts, :mod:`training.datasets.wikipedia`), a collection of one's own (a
``.jsonl`` manifest or a folder holding ``manifest.jsonl``, :mod:`training.datasets.collection`), a path
to a ``.mat`` benchmark file or DCMH prefix, or the name of one found in the repository's ``data/`` or in
``../shared/data/`` (e.g. ``mirflickr25k``).
"""

from __future__ import annotations

from pathlib import Path

from index.collection import CollectionError, is_collection
from training.datasets.base import BENCHMARK_DIRS, CrossModalDataset, DatasetNotFoundError, Split, seeded_split
from training.datasets.collection import load_collection
from training.datasets.matfile import load_mat
from training.datasets.openclipart import load_openclipart
from training.datasets.wikipedia import WIKIPEDIA_TEXTS, load_wikipedia

__all__ = ["BENCHMARK_DIRS", "CrossModalDataset", "DatasetNotFoundError", "Split", "load_dataset", "seeded_split"]


def _find_shared(name: str) -> Path | None:
    for folder in BENCHMARK_DIRS:
        for candidate in (folder / f"{name}.mat", folder / name):
            if candidate.is_file() or Path(f"{candidate}-lall.mat").is_file():
                return candidate
    return None


def load_dataset(spec: str, seed: int = 0, n_query: int | None = None) -> CrossModalDataset:
    """Load a dataset by name or path with its seeded standard split (Wikipedia, pre-split ``.mat`` files
    and collections whose rows carry ``split`` keep their own fixed split: ``seed`` and ``n_query`` do
    not apply to them)."""
    split_args = {"seed": seed} | ({"n_query": n_query} if n_query else {})
    if spec == "openclipart":
        return load_openclipart(**split_args)
    if spec in WIKIPEDIA_TEXTS:
        return load_wikipedia(spec)
    if is_collection(spec):
        try:
            return load_collection(spec, **split_args)
        except CollectionError as exc:
            raise DatasetNotFoundError(str(exc)) from exc
    path = Path(spec)
    if path.is_file() or Path(f"{spec}-lall.mat").is_file():
        return load_mat(path, **split_args)
    shared = _find_shared(spec)
    if shared is None:
        raise DatasetNotFoundError(
            f"unknown dataset {spec!r}: use 'openclipart', a collection manifest (.jsonl, or a folder holding "
            "manifest.jsonl), a path to a .mat file (or DCMH prefix), "
            f"or a dataset name present in {' or '.join(map(str, BENCHMARK_DIRS))}"
        )
    return load_mat(shared, **split_args)
