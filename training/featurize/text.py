"""Bag-of-words text features: a vocabulary fitted on the training split, saved as plain JSON.

scikit-learn's CountVectorizer does the tokenising (lower-case alphabetic tokens of ≥ 2 letters,
underscores split words: ``signs_and_symbols`` → ``signs``, ``symbols``), English stop words and the
document-frequency cut-off; we keep only its parameters and vocabulary so a bundle needs no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer

TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


@dataclass(frozen=True)
class BagOfWordsParams:
    min_count: int = 3  # a word must occur in at least this many training documents
    max_features: int | None = 2000  # most frequent words kept
    binary: bool = True  # 1 if a word occurs (the literature's MIRFlickr tags are binary); else counts


class BagOfWords:
    """``fit`` on training texts, ``transform`` any texts to (n, vocabulary size) float32."""

    def __init__(self, params: BagOfWordsParams | None = None, vocabulary: Sequence[str] | None = None) -> None:
        self.params = params or BagOfWordsParams()
        self.vocabulary: list[str] = list(vocabulary) if vocabulary is not None else []

    def _vectorizer(self, vocabulary: Sequence[str] | None) -> CountVectorizer:
        return CountVectorizer(
            lowercase=True,
            token_pattern=TOKEN_PATTERN,
            stop_words="english",
            min_df=self.params.min_count,
            max_features=self.params.max_features,
            binary=self.params.binary,
            vocabulary=vocabulary,
            dtype=np.float32,
        )

    def fit(self, texts: Sequence[str]) -> BagOfWords:
        vectorizer = self._vectorizer(None).fit(_words(texts))
        self.vocabulary = list(vectorizer.get_feature_names_out())
        if not self.vocabulary:
            raise ValueError("no word of the training texts passes the vocabulary filters")
        return self

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        if not self.vocabulary:
            raise RuntimeError("BagOfWords.transform called before fit")
        return self._vectorizer(self.vocabulary).transform(_words(texts)).toarray()

    def to_json(self) -> dict:
        return {"params": asdict(self.params), "vocabulary": self.vocabulary}

    @classmethod
    def from_json(cls, data: dict) -> BagOfWords:
        return cls(BagOfWordsParams(**data["params"]), data["vocabulary"])


def _words(texts: Sequence[str]) -> list[str]:
    """Underscores become spaces so compound tags such as ``signs_and_symbols`` split into words."""
    return [t.replace("_", " ") for t in texts]
