"""The default bundle's float64 hash functions run in float32 give every bit of the float64 graphs' codes,
on all of OpenClipart's items (the held-out query split and the database), and say which rows needed
the float64 graph again."""

from __future__ import annotations

import numpy as np
import pytest

from index.bundle import INPUT_NAME, load_bundle
from index.bundle.float32 import MARGIN, float32_graph
from index.codes import pack_signs, to_signs
from service.settings import DEFAULT_BUNDLE
from training.datasets.openclipart import load_openclipart
from training.featurize.pretrained import pretrained_features


@pytest.fixture(scope="module")
def items() -> dict[str, dict[str, np.ndarray]]:
    """Per split (held-out ``query``, ``database``), per modality: the pretrained features."""
    corpus = load_openclipart()
    image, text = pretrained_features(corpus)[:2]
    return {part: {"image": image[rows], "text": text[rows]} for part, rows in
            (("query", corpus.split.query), ("database", corpus.split.database))}  # fmt: skip


@pytest.mark.parametrize("modality", ["image", "text"])
def test_codes_in_float32_are_the_float64_graphs_bit_for_bit(items, modality: str) -> None:
    bundle = load_bundle(DEFAULT_BUNDLE, threads=1)
    narrowed = bundle._float32[modality]
    assert narrowed is not None  # the default's graphs are float64: their float32 twin is what runs
    rechecked = 0
    for part, features in items.items():
        real = bundle.sessions[modality].run(None, {INPUT_NAME: features[modality]})[0]
        before = narrowed.rows_rechecked
        served = bundle.packed_codes(modality, features[modality])
        rechecked += narrowed.rows_rechecked - before
        differing = int(np.unpackbits(served ^ pack_signs(to_signs(real))).sum())
        assert differing == 0, f"{part}: {differing} bits differ"
        # the real codes (the re-ranker's query input) within float32's error of the float64 graph's
        assert np.abs(bundle.real_codes(modality, features[modality]) - real).max() < MARGIN
    assert 0 < rechecked < 0.2 * sum(len(f[modality]) for f in items.values())


def test_float32_alone_would_move_a_few_signs_so_the_recheck_is_needed(items) -> None:
    """Without the float64 recheck, the database split's codes differ in a few bits (the reason for it)."""
    bundle = load_bundle(DEFAULT_BUNDLE, threads=1)
    differing = 0
    for modality in ("image", "text"):
        x = items["database"][modality]
        float64 = to_signs(bundle.sessions[modality].run(None, {INPUT_NAME: x})[0])
        float32 = to_signs(bundle._float32[modality].session.run(None, {INPUT_NAME: x})[0])
        differing += int((float64 != float32).sum())
    assert differing > 0


def test_a_graph_already_in_float32_is_not_narrowed() -> None:
    narrowed = float32_graph((DEFAULT_BUNDLE / "text.onnx").read_bytes())
    assert narrowed is not None and float32_graph(narrowed) is None


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_rows_real_code_does_not_depend_on_the_rows_hashed_with_it(items, modality: str) -> None:
    """The held-out queries hashed one by one and in batches of 2 to 16 (as the service's hash batcher runs
    them) give the same real codes, bit for bit: a query's code and its re-ranking never depend on the
    load."""
    bundle = load_bundle(DEFAULT_BUNDLE, threads=1)
    x = items["query"][modality][:240]
    alone = np.concatenate([bundle.real_codes(modality, x[i : i + 1]) for i in range(len(x))])
    for size in (2, 3, 5, 8, 16):
        batched = np.concatenate([bundle.real_codes(modality, x[i : i + size]) for i in range(0, len(x), size)])
        assert np.array_equal(batched, alone), f"batches of {size}"
