"""Fit the bag-of-words vocabulary on the training split; the features come from ``index.bundle``'s
:class:`~index.bundle.featurizers.BagOfWords`, which the service runs from the saved vocabulary.

scikit-learn's CountVectorizer applies English stop words and the document-frequency and vocabulary-size
cut-offs over the shared tokenizer's tokens; we keep only the parameters and the vocabulary, so a
bundle needs no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from index.bundle.featurizers import BagOfWords, BagOfWordsParams, tokens


def _content_words(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in ENGLISH_STOP_WORDS]


def fit_bag_of_words(texts: Sequence[str], params: BagOfWordsParams | None = None) -> BagOfWords:
    """The vocabulary of ``texts``: words of at least ``min_count`` documents, the ``max_features`` most frequent."""
    params = params or BagOfWordsParams()
    vectorizer = CountVectorizer(analyzer=_content_words, min_df=params.min_count, max_features=params.max_features)
    vocabulary = list(vectorizer.fit(texts).get_feature_names_out())
    if not vocabulary:
        raise ValueError("no word of the training texts passes the vocabulary filters")
    return BagOfWords(params, vocabulary)
