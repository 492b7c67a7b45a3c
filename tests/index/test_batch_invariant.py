"""Texts featurized in batches get the features each gets alone from the shipped int8 MiniLM graph, bit for
bit, on the held-out texts (OpenClipart's query split and the natural queries), and no text is padded."""

from __future__ import annotations

import numpy as np
import pytest

from index.bundle.pretrained import TextEncoder
from service.settings import DEFAULT_BUNDLE
from training.datasets.openclipart import load_openclipart
from training.evaluation.natural_queries import NATURAL_QUERIES

GRAPH = DEFAULT_BUNDLE / "featurizer_minilm_l6_v2.int8.onnx"
TOKENIZER = DEFAULT_BUNDLE / "featurizer_minilm_tokenizer.json"


class Recording:
    """An onnxruntime session that records the inputs of each run."""

    def __init__(self, session) -> None:
        self.session = session
        self.inputs: list[dict[str, np.ndarray]] = []

    def run(self, outputs, feed):
        self.inputs.append(feed)
        return self.session.run(outputs, feed)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(GRAPH, TOKENIZER.read_bytes())


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    corpus = load_openclipart()
    return list(NATURAL_QUERIES) + [corpus.texts[i] for i in corpus.split.query]


def test_batched_features_equal_each_texts_run_alone_bit_for_bit(encoder: TextEncoder, held_out: list[str]) -> None:
    alone = np.concatenate([encoder.session.run(None, encoder.tokens([text]))[0] for text in held_out])
    runs: list[int] = []
    batched = encoder.embed_texts(held_out, progress=runs.append)
    assert sum(size for size in runs if size > 1) > len(held_out) / 2  # most ran in shared calls
    differing = np.flatnonzero((batched != alone).any(axis=1))
    assert differing.size == 0, f"{differing.size} of {len(held_out)} texts differ"


def test_no_text_is_padded_to_another(encoder: TextEncoder, held_out: list[str]) -> None:
    recorded = TextEncoder(GRAPH, TOKENIZER.read_bytes())
    recorded.session, recorded.batch_session = Recording(encoder.session), Recording(encoder.batch_session)
    recorded.embed_texts(held_out[:300])
    feeds = recorded.session.inputs + recorded.batch_session.inputs
    assert recorded.batch_session.inputs and all(feed["attention_mask"].all() for feed in feeds)
