"""The Wikipedia cross-modal benchmark (Rasiwasia et al., ACM MM 2010) by name, with its standard split.

2,866 image–text pairs in 10 categories (one each). ``wikipedia``: 128-d SIFT bag-of-visual-words
images and 10-d LDA topic texts from ``wiki_data.mat``, the exact features of the UDDH paper's Table III;
``wikipedia-tfidf``: the same images with the 1,000-d tf-idf texts of ``raw_features.mat``. The split is
the literature's, as the files give it: queries = the 693 test items, database = training set = the
2,173 training items; relevance = same category (the class-index column ``L_tr``/``L_te``, one-hot).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from training.datasets.base import REPO_DATA, CrossModalDataset, DatasetNotFoundError
from training.datasets.matfile import load_mat, read_arrays, sample_rows

WIKIPEDIA_DIR = REPO_DATA / "wikipedia"  # shipped in the repository, with its source and citation
# Dataset name → the text feature arrays (training part, test part) of raw_features.mat; None: LDA.
WIKIPEDIA_TEXTS: dict[str, tuple[str, str] | None] = {
    "wikipedia": None,
    "wikipedia-tfidf": ("T_tfidf_tr", "T_tfidf_te"),
}


def load_wikipedia(name: str = "wikipedia", root: Path = WIKIPEDIA_DIR) -> CrossModalDataset:
    """The benchmark with the text features ``name`` selects (LDA or tf-idf); rows are queries first."""
    if name not in WIKIPEDIA_TEXTS:
        raise ValueError(f"unknown Wikipedia variant {name!r}: use one of {sorted(WIKIPEDIA_TEXTS)}")
    files = {"lda": root / "wiki_data.mat", "tfidf": root / "raw_features.mat"}
    absent = [str(f) for f in files.values() if not f.is_file()]
    if absent:
        raise DatasetNotFoundError(f"Wikipedia benchmark files missing: {', '.join(absent)}")
    data = load_mat(files["lda"], n_train=None)
    data = replace(data, name=name, label_names=[f"category{c}" for c in range(1, data.labels.shape[1] + 1)])
    keys = WIKIPEDIA_TEXTS[name]
    if keys is None:
        return data
    arrays = read_arrays(files["tfidf"], keys)
    sizes = len(data.split.database), len(data.split.query)
    train, test = (sample_rows(arrays[k], n, k) for k, n in zip(keys, sizes, strict=True))
    return replace(data, texts=np.concatenate([test, train]))
