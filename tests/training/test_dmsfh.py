"""DMSFH trainer: each loss term of Eq. 13 by hand, the B step (Eq. 19) without n × n matrices, the networks
(multi-scale fusion, gradients), training, ablations, reproducibility, ONNX parity and input checks."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from index.bundle import load_bundle
from index.codes import to_signs
from tests.support.synthetic import as_feature_dataset, make_synthetic_crossmodal, short_texts
from training.bundle.writer import write_bundle
from training.evaluation.metrics import evaluate_codes, relevance
from training.featurize.pipeline import featurize
from training.methods import dmsfh
from training.methods.base import TextViews
from training.methods.deep import Monitor
from training.methods.dmsfh import (
    DMSFHConfig,
    LabelGraph,
    MultiScaleFusion,
    build_networks,
    graph_loss,
    inter_modal_loss,
    intra_modal_loss,
    label_loss,
    label_similarity,
    objective,
    quantization_loss,
    relaxed_code_objective,
    relaxed_codes,
    sample_views,
    train_dmsfh,
    update_codes,
)
from training.registry import TRAINERS


@pytest.fixture(autouse=True)
def one_thread():
    """The suite shares two cores: every torch op in this file runs on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Small networks and few epochs: every training test runs in seconds on one core. The paper's weights
# α = β = γ = 1: the CPU preset's 100 suits n ≈ 5,000 (the pairwise sums grow with n), not these n ≤ 600.
SMALL = {"image_hidden": (64,), "text_hidden": (64,), "batch_size": 64, "epochs": 4, "alpha": 1.0, "beta": 1.0}
SMALL |= {"gamma": 1.0}


def small_config(**overrides) -> DMSFHConfig:
    return DMSFHConfig(**({"bits": 16} | SMALL | overrides))


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


# -- the loss terms, each against a hand computation ---------------------------------------------------------

# Two items, two bits. φ_ij = ½ F_i·G_j: F_0·G_0 = 0, F_0·G_1 = −1, F_1·G_0 = 1, F_1·G_1 = −0.5.
F = [[1.0, -1.0], [0.5, 0.5]]
G = [[1.0, 1.0], [-1.0, 0.0]]
S = [[1.0, 0.0], [0.0, 1.0]]  # item 0 is similar to item 0 only, item 1 to item 1 only


def test_label_similarity_is_one_iff_two_items_share_a_label() -> None:
    labels = t([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    expected = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert label_similarity(labels, labels).tolist() == expected


def test_l1_inter_modal_nll_eq3() -> None:
    # −Σ_ij (S_ij φ_ij − log(1 + e^φ_ij)) with φ = [[0, −0.5], [0.5, −0.25]]
    by_hand = (softplus(0) + softplus(-0.5) + softplus(0.5) + softplus(-0.25)) - (1 * 0 + 1 * -0.25)
    assert float(inter_modal_loss(t(F), t(G), t(S))) == pytest.approx(by_hand, rel=1e-12)


def test_l2_intra_modal_nll_eq5_to_7() -> None:
    # F Fᵀ = [[2, 0], [0, 0.5]] → φ^vv = [[1, 0], [0, 0.25]];  G Gᵀ = [[2, −1], [−1, 1]] → φ^tt = [[1, −.5], [−.5, .5]]
    image = softplus(1) + 2 * softplus(0) + softplus(0.25) - (1 + 0.25)
    text = softplus(1) + 2 * softplus(-0.5) + softplus(0.5) - (1 + 0.5)
    assert float(intra_modal_loss(t(F), t(F), t(S))) == pytest.approx(image, rel=1e-12)
    assert float(intra_modal_loss(t(G), t(G), t(S))) == pytest.approx(text, rel=1e-12)


def test_l3_label_cross_entropy_eq8_to_10() -> None:
    labels = t([[1, 0]])
    image_logits, text_logits = t([[2.0, -1.0]]), t([[0.0, 3.0]])
    # Σ_j −L_j L̂_j + log(1 + e^L̂_j), image then text
    by_hand = (-2 + softplus(2) + softplus(-1)) + (0 + softplus(0) + softplus(3))
    both = label_loss(image_logits, labels) + label_loss(text_logits, labels)
    assert float(both) == pytest.approx(by_hand, rel=1e-12)


def test_l5_quantization_eq12() -> None:
    b = t([[1, -1], [1, 1]])
    # ‖B − F‖² = 0 + 0 + 0.25 + 0.25;  ‖B − G‖² = 0 + 4 + 4 + 1
    assert float(quantization_loss(b, t(F), t(G))) == pytest.approx(0.5 + 9.0)
    assert float(quantization_loss(b, t(F))) == pytest.approx(0.5)  # one network's share


# Four items: 0 and 1 share label a, 1 and 2 share label b, 3 has only label c. Degrees (self included):
# d = [2, 3, 2, 1]. Codes with one bit each make the pair sums easy to read.
GRAPH_LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])
GRAPH_CODES = np.array([[1.0], [-1.0], [-1.0], [1.0]])


def test_l4_graph_regularisation_eq11_paper_laplacian() -> None:
    graph = LabelGraph(GRAPH_LABELS, normalized=False)
    # ½ Σ_ij S_ij ‖b_i − b_j‖²: the pairs (0,1) and (1,0) differ by 2 (squared 4), (1,2) agree → ½ · 8
    assert graph_loss(GRAPH_CODES, graph) == pytest.approx(4.0)
    # the same as tr(Bᵀ (D − S) B) for random real codes
    b = np.random.default_rng(0).normal(size=(4, 3))
    s = (GRAPH_LABELS @ GRAPH_LABELS.T > 0).astype(float)
    by_loops = 0.5 * sum(s[i, j] * ((b[i] - b[j]) ** 2).sum() for i, j in itertools.product(range(4), repeat=2))
    assert graph_loss(b, graph) == pytest.approx(by_loops, rel=1e-12)


def test_l4_normalised_laplacian() -> None:
    graph = LabelGraph(GRAPH_LABELS, normalized=True)
    d = np.array([2.0, 3.0, 2.0, 1.0])
    # ½ Σ S_ij (b_i/√d_i − b_j/√d_j)²: pairs (0,1) twice, (1,2) twice
    by_hand = (1 / math.sqrt(2) + 1 / math.sqrt(3)) ** 2 + (-1 / math.sqrt(3) + 1 / math.sqrt(2)) ** 2
    assert graph_loss(GRAPH_CODES, graph) == pytest.approx(by_hand, rel=1e-12)
    assert np.allclose(graph.diagonal, 1.0) and np.allclose(graph.group_degree[graph.group], d)


def test_objective_eq13_weighs_the_terms() -> None:
    config = DMSFHConfig(bits=8, alpha=0.5, beta=3.0, gamma=7.0)
    terms = {"inter_modal": 1.0, "intra_modal": 10.0, "label": 100.0, "graph": 1000.0, "quantization": 1e4}
    assert objective(terms, config) == pytest.approx(1 + 10 + 0.5 * 100 + 7 * 1000 + 3 * 1e4)
    del terms["graph"], terms["label"]  # an ablation leaves terms out
    assert objective(terms, config) == pytest.approx(1 + 10 + 3 * 1e4)


def test_the_training_step_computes_its_loss_with_the_tested_functions(monkeypatch) -> None:
    names = ("inter_modal_loss", "intra_modal_loss", "label_loss", "quantization_loss")
    calls = dict.fromkeys(names, 0)

    def counted(name: str):
        original = getattr(dmsfh, name)

        def wrapper(*args):
            calls[name] += 1
            return original(*args)

        return wrapper

    for name in names:
        monkeypatch.setattr(dmsfh, name, counted(name))
    data = make_synthetic_crossmodal(n=100, seed=4)
    train_dmsfh(data["image"], data["text"], data["labels"], small_config(epochs=1))
    # 2 minibatches of 64 per network, both networks; L5 once more for the epoch's history record
    assert calls == {"inter_modal_loss": 4, "intra_modal_loss": 4, "label_loss": 4, "quantization_loss": 5}


# -- the B step (Eq. 19) --------------------------------------------------------------------------------------


def dense_laplacian(labels: np.ndarray, normalized: bool) -> np.ndarray:
    s = (labels @ labels.T > 0).astype(float)
    d = s.sum(1)
    if not normalized:
        return np.diag(d) - s
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-300)), 0.0)
    return np.diag((d > 0).astype(float)) - inv[:, None] * s * inv[None, :]


@pytest.mark.parametrize(("normalized", "max_dense_groups"), list(itertools.product((False, True), (4096, 3))))
@pytest.mark.parametrize("weight", [0.0, 0.3, 5.0])
def test_b_step_equals_the_dense_solution_and_minimises_the_relaxed_eq18(
    normalized: bool, max_dense_groups: int, weight: float
) -> None:
    rng = np.random.default_rng(5)
    n, bits = 30, 6
    labels = (rng.random((n, 4)) < 0.35).astype(float)  # some items have no label at all
    f, g = np.tanh(rng.normal(size=(n, bits))), np.tanh(rng.normal(size=(n, bits)))
    graph = LabelGraph(labels, normalized=normalized, max_dense_groups=max_dense_groups)  # 3: the CG path
    assert graph.n_groups > 3
    lap = dense_laplacian(labels, normalized)
    dense = np.linalg.solve(2 * np.eye(n) + weight * lap, f + g)  # Eq. 19 as derived: (2I + γ/β L)⁻¹ (F + G)
    x = relaxed_codes(f, g, graph, weight)
    np.testing.assert_allclose(x, dense, atol=1e-9)
    codes = update_codes(f, g, graph, weight)
    assert codes.dtype == np.int8 and np.array_equal(codes, to_signs(dense))
    best = relaxed_code_objective(x, f, g, graph, weight)
    previous = rng.choice([-1.0, 1.0], size=(n, bits))  # any earlier B is feasible for the relaxation
    assert best <= relaxed_code_objective(previous, f, g, graph, weight)
    for _ in range(5):
        assert best <= relaxed_code_objective(x + 1e-3 * rng.normal(size=x.shape), f, g, graph, weight)


def test_b_step_without_graph_is_the_sign_of_f_plus_g() -> None:
    rng = np.random.default_rng(6)
    f, g = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
    assert np.array_equal(update_codes(f, g, None, 0.0), to_signs(f + g))


def test_b_step_memory_is_linear_in_n() -> None:
    """12,000 items: an n × n float64 matrix alone would take 1.15 GB; the solve stays under 40 MB."""
    rng = np.random.default_rng(7)
    n = 12_000
    labels = (rng.random((n, 6)) < 0.3).astype(float)
    r = rng.normal(size=(n, 16))
    tracemalloc.start()
    graph = LabelGraph(labels)
    x = graph.solve(r, 1.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40e6 and x.shape == (n, 16) and np.isfinite(x).all()


# -- networks ----------------------------------------------------------------------------------------------


def test_multi_scale_fusion_pools_convolves_and_resizes_each_scale() -> None:
    block = MultiScaleFusion(dim=10, scales=(10, 5)).double()
    x = torch.arange(10, dtype=torch.float64)[None, :]  # 0 … 9
    out = block(x)
    assert out.shape == (1, 3, 10)
    assert torch.equal(out[0, 0], x[0])  # the input is the first channel
    torch.testing.assert_close(out[0, 1], torch.full((10,), 4.5, dtype=torch.float64))  # one window: the mean
    # two windows (means 2 and 7) linearly resized to 10: flat at the ends, a ramp in between
    assert out[0, 2, 0].item() == pytest.approx(2.0) and out[0, 2, -1].item() == pytest.approx(7.0)
    assert torch.all(torch.diff(out[0, 2]) >= 0)
    with torch.no_grad():
        block.weight[1] = -1.0  # the 1 × 1 conv of scale 5, then ReLU: negative pooled values vanish
    assert torch.all(block(x)[0, 2] == 0)


@pytest.mark.parametrize("dim", [875, 60, 53])
def test_multi_scale_fusion_equals_torchs_avg_pool_conv_and_interpolate(dim: int) -> None:
    """The same block written with the ops the paper names (SSAH's TxtNet), on a random sparse BoW."""
    torch.manual_seed(dim)
    scales = (50, 30, 15, 10, 5)
    block = MultiScaleFusion(dim, scales).double()
    with torch.no_grad():
        block.weight.copy_(torch.tensor([0.5, 2.0, 1.0, -0.5, 1.5]))
        block.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3, -0.1]))
    x = (torch.rand(4, dim, dtype=torch.float64) < 0.05).double()
    expected = [x]
    for i, scale in enumerate(scales):
        pooled = torch.nn.functional.avg_pool1d(x[:, None, :], scale, scale)  # "valid" windows
        activated = torch.relu(block.weight[i] * pooled + block.bias[i])
        expected.append(torch.nn.functional.interpolate(activated, size=dim, mode="linear")[:, 0])
    torch.testing.assert_close(block(x), torch.stack(expected, dim=1), rtol=0, atol=1e-6)


def test_every_parameter_of_both_networks_gets_a_gradient_from_eq13() -> None:
    data = make_synthetic_crossmodal(n=40, image_dim=20, text_dim=60, seed=8)
    config = small_config()
    torch.manual_seed(0)
    nets = build_networks(data["image"], data["text"], 6, config)
    image, text = (torch.as_tensor(data[m], dtype=torch.float32) for m in ("image", "text"))
    labels = torch.as_tensor(data["labels"], dtype=torch.float32)
    f, image_logits = nets["image"].parts(image)
    g, text_logits = nets["text"].parts(text)
    s = label_similarity(labels, labels)
    b = torch.sign(f + g).detach()
    terms = {
        "inter_modal": inter_modal_loss(f, g, s),
        "intra_modal": intra_modal_loss(f, f, s) + intra_modal_loss(g, g, s),
        "label": label_loss(image_logits, labels) + label_loss(text_logits, labels),
        "quantization": quantization_loss(b, f, g),
    }
    objective(terms, config).backward()
    for modality, net in nets.items():
        for name, parameter in net.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{modality}: {name}"
    fusion = nets["text"].backbone[0]
    assert isinstance(fusion, MultiScaleFusion) and fusion.scales == (50, 30, 15, 10, 5)
    assert fusion.weight.grad.shape == (5,)  # every scale of the fusion block learns
    assert torch.all(fusion.weight.grad != 0) and torch.all(fusion.bias.grad != 0)


# -- training ----------------------------------------------------------------------------------------------

TRAIN, QUERY = slice(0, 600), slice(600, 700)


@pytest.fixture(scope="module")
def synthetic_run() -> tuple[dict, object]:
    """Ten latent classes (label prior ≈ 0.45)."""
    data = make_synthetic_crossmodal(n=700, n_classes=10, seed=1)
    config = small_config(epochs=8, image_hidden=(128,), text_hidden=(128,))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hasher = train_dmsfh(data["image"][TRAIN], data["text"][TRAIN], data["labels"][TRAIN], config, seed=0)
    finally:
        torch.set_num_threads(previous)
    return data, hasher


def test_training_lowers_the_objective_and_beats_the_label_prior(synthetic_run) -> None:
    data, hasher = synthetic_run
    history = hasher.history
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["objective"] < 0.9 * history[0]["objective"]
    assert {"inter_modal", "intra_modal", "label", "graph", "quantization"} <= set(history[-1])
    labels_q, labels_db = data["labels"][QUERY], data["labels"][TRAIN]
    prior = float(relevance(labels_q, labels_db).mean())

    def codes(modality: str, rows: slice) -> np.ndarray:
        return to_signs(hasher.encoders[modality].real_codes(data[modality][rows]))

    i2t = evaluate_codes(codes("image", QUERY), codes("text", TRAIN), labels_q, labels_db)["mAP"]
    t2i = evaluate_codes(codes("text", QUERY), codes("image", TRAIN), labels_q, labels_db)["mAP"]
    assert i2t > prior + 0.15 and t2i > prior + 0.15, (prior, i2t, t2i)


def test_the_hasher_holds_the_hash_layers_only(synthetic_run) -> None:
    data, hasher = synthetic_run
    assert hasher.method == "dmsfh" and hasher.bits == 16 and hasher.config["seed"] == 0
    assert hasher.config["label_loss"] is True and hasher.config["text_scales"] == (50, 30, 15, 10, 5)
    for modality in ("image", "text"):
        encoder = hasher.encoders[modality]
        assert encoder.net.label is None  # the label layer is training-only
        codes = encoder.real_codes(data[modality][:5])
        assert codes.shape == (5, 16) and codes.dtype == np.float64 and np.abs(codes).max() < 1


@pytest.mark.parametrize(
    ("switches", "absent"),
    [({"label_loss": False}, {"label"}), ({"graph_loss": False}, {"graph"}), ({}, set())],
)
def test_ablation_switches_remove_their_terms(switches: dict, absent: set) -> None:
    data = make_synthetic_crossmodal(n=100, seed=9)
    hasher = train_dmsfh(data["image"], data["text"], data["labels"], small_config(epochs=1, **switches))
    terms = {"inter_modal", "intra_modal", "label", "graph", "quantization"}
    assert terms & set(hasher.history[0]) == terms - absent
    assert hasher.config["label_loss"] == ("label" not in absent)


def test_eval_fn_values_land_in_history_every_eval_every_epochs() -> None:
    data = make_synthetic_crossmodal(n=80, seed=10)
    calls = []

    def eval_fn(hasher) -> dict:
        calls.append(len(hasher.history))
        return {"val_map_i2t": 0.25, "val_map_t2i": 0.5}

    config = small_config(epochs=3, eval_every=2)
    hasher = train_dmsfh(
        data["image"], data["text"], data["labels"], config, monitor=Monitor(progress=True, eval_fn=eval_fn)
    )
    assert calls == [2, 3]  # epoch 2 and the last; the hasher passed in holds the history so far
    assert ["val_map_i2t" in h for h in hasher.history] == [False, True, True]
    assert hasher.history[-1]["val_map_t2i"] == 0.5


def test_seeded_runs_are_reproducible() -> None:
    data = make_synthetic_crossmodal(n=120, seed=3)
    config = small_config(epochs=2)
    runs = [train_dmsfh(data["image"], data["text"], data["labels"], config, seed=s) for s in (7, 7, 8)]
    codes = [to_signs(r.encoders["text"].real_codes(data["text"])) for r in runs]
    assert np.array_equal(codes[0], codes[1]) and runs[0].history == runs[1].history
    assert np.array_equal(
        runs[0].encoders["image"].real_codes(data["image"]), runs[1].encoders["image"].real_codes(data["image"])
    )
    assert not np.array_equal(codes[0], codes[2])


# -- text views ----------------------------------------------------------------------------------------------


def test_sample_views_draws_up_to_k_distinct_views_of_each_item() -> None:
    item = np.array([0, 0, 0, 2, 2, 5])
    for k, expected in ((1, {0: 1, 2: 1, 5: 1}), (2, {0: 2, 2: 2, 5: 1}), (9, {0: 3, 2: 2, 5: 1})):
        chosen = sample_views(np.random.default_rng(k), item, k)
        assert len(set(chosen)) == len(chosen) and np.all(np.diff(chosen) > 0)
        assert dict(zip(*np.unique(item[chosen], return_counts=True), strict=True)) == expected
    draws = {tuple(sample_views(np.random.default_rng(seed), item, 1)) for seed in range(20)}
    assert len(draws) > 1  # random, not always the first view


def test_text_views_teach_the_text_network_short_queries() -> None:
    data = make_synthetic_crossmodal(n=700, n_classes=10, seed=3)
    train = np.arange(600)
    views, _ = short_texts(data, np.repeat(train, 2), seed=2)
    queries, tags = short_texts(data, np.arange(600, 700), seed=2)
    relevant = data["labels"][train][:, tags].T.astype(bool)
    precision = {}
    for name, text_views in (("without", None), ("with", TextViews(views, np.repeat(np.arange(600), 2)))):
        hasher = train_dmsfh(
            data["image"][train],
            data["text"][train],
            data["labels"][train],
            small_config(epochs=6),
            0,
            None,
            text_views,
        )
        images = to_signs(hasher.encoders["image"].real_codes(data["image"][train]))
        codes = to_signs(hasher.encoders["text"].real_codes(queries))
        order = np.argsort(((codes[:, None, :] != images[None]).sum(-1)), axis=1, kind="stable")[:, :10]
        precision[name] = float(np.take_along_axis(relevant, order, axis=1).mean())
    assert precision["with"] > precision["without"] + 0.1, precision


def test_views_per_item_zero_ignores_the_views() -> None:
    data = make_synthetic_crossmodal(n=120, seed=3)
    views = TextViews(data["text"][:10] * 0.5, np.arange(10))
    runs = [
        train_dmsfh(data["image"], data["text"], data["labels"], small_config(epochs=2, views_per_item=0), 0, None, v)
        for v in (None, views)
    ]
    assert np.array_equal(
        runs[0].encoders["text"].real_codes(data["text"]), runs[1].encoders["text"].real_codes(data["text"])
    )


@pytest.mark.parametrize(
    ("views", "message"),
    [
        (TextViews(np.ones((3, 7)), np.arange(3)), "text views have 7 dimensions, the texts 60"),
        (TextViews(np.ones((3, 60)), np.array([0, 1, 40])), "training rows 0..39"),
        (TextViews(np.full((3, 60), np.nan), np.arange(3)), "text view features contain NaN or inf"),
    ],
)
def test_bad_text_views_are_refused_before_training(views: TextViews, message: str) -> None:
    data = make_synthetic_crossmodal(n=40, seed=4)
    with pytest.raises(ValueError, match=message):
        train_dmsfh(data["image"], data["text"], data["labels"], small_config(), text_views=views)


def test_bundle_round_trip_gives_the_trainers_codes_bit_for_bit(tmp_path: Path) -> None:
    data = make_synthetic_crossmodal(n=300)
    data["text"][:5] = 0.0  # empty texts in training are fine
    features = featurize(as_feature_dataset(data))
    image, text, labels = features.part("train")
    hasher = train_dmsfh(image, text, labels, small_config(epochs=2))
    write_bundle(tmp_path / "dmsfh", hasher, features, {})
    bundle = load_bundle(tmp_path / "dmsfh")
    query_image, query_text, _ = features.part("query")
    for modality, x in (("image", query_image), ("text", query_text), ("image", features.image)):
        trainer = to_signs(hasher.encoders[modality].real_codes(x))
        assert np.array_equal(bundle.signs(modality, x), trainer)
    assert bundle.manifest.method == "dmsfh"


@pytest.mark.filterwarnings("ignore:Constant folding:UserWarning")  # the exporter, on the traced slices
def test_cnn_image_network_on_raw_pixels_trains_and_exports(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = make_synthetic_crossmodal(n=60, seed=11)
    size = 8
    pixels = rng.random((60, 3 * size * size)).astype(np.float32)  # flattened 3 × 8 × 8 in [0, 1]
    config = small_config(epochs=1, image_net="cnn", image_size=size, cnn_channels=(4, 8))
    hasher = train_dmsfh(pixels, data["text"], data["labels"], config)
    session = ort.InferenceSession(hasher.encoders["image"].onnx_graph().SerializeToString())
    onnx_codes = session.run(None, {"features": pixels})[0]
    np.testing.assert_allclose(onnx_codes, hasher.encoders["image"].real_codes(pixels), rtol=0, atol=1e-12)


# -- bad input ---------------------------------------------------------------------------------------------


def _bad(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = make_synthetic_crossmodal(n=40, seed=4)
    image, text, labels = data["image"], data["text"], data["labels"]
    if kind == "nan":
        image[3, 2] = np.nan
    elif kind == "inf":
        text[1, 0] = np.inf
    elif kind == "rows":
        text = text[:-1]
    elif kind == "label rows":
        labels = labels[:-1]
    elif kind == "label values":
        labels = labels * 2
    elif kind == "empty class":
        labels = np.hstack([labels, np.zeros((40, 1), labels.dtype)])
    elif kind == "zero text":
        text = np.zeros_like(text)
    elif kind == "short text":
        text = text[:, :20]
    return image, text, labels


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "image features contain NaN or inf"),
        ("inf", "text features contain NaN or inf"),
        ("rows", "paired row by row"),
        ("label rows", r"labels must have shape \(40, c\)"),
        ("label values", "multi-hot 0/1"),
        ("empty class", "empty class"),
        ("zero text", "every text training row has zero norm"),
        ("short text", "fewer than the largest multi-scale pooling window"),
        ("pixels", "flattened 3 × 64 × 64 pixels"),
    ],
)
def test_bad_inputs_are_refused_before_training(kind: str, message: str) -> None:
    config = small_config(image_net="cnn") if kind == "pixels" else small_config()
    with pytest.raises(ValueError, match=message):
        train_dmsfh(*_bad(kind), config)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bits": 0}, "bits must be positive"),
        ({"epochs": 0}, "epochs, batch_size and eval_every must be positive"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"lr": 0.0}, "learning rates must be positive"),
        ({"gamma": -1.0}, "gamma must be a non-negative number"),
        ({"alpha": float("nan")}, "alpha must be a non-negative number"),
        ({"beta": 0.0}, "beta .* must be positive when the graph loss is on"),
        ({"label_loss": "false"}, "label_loss must be true or false"),
        ({"graph_laplacian": "random-walk"}, "graph_laplacian must be"),
        ({"image_net": "resnet34"}, "image_net must be 'mlp' or 'cnn'"),
        ({"text_hidden": ()}, "at least one positive layer size"),
        ({"text_scales": (5, 5)}, "distinct positive window sizes"),
        ({"image_net": "cnn", "image_size": 8}, "image_size"),
        ({"torch_threads": 0}, "torch_threads must be positive"),
        ({"views_per_item": -1}, "views_per_item must be non-negative"),
    ],
)
def test_bad_configs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**fields)


def test_the_registry_refuses_a_dataset_without_labels() -> None:
    data = make_synthetic_crossmodal(n=100, seed=12)
    data["labels"] = np.zeros_like(data["labels"])
    features = featurize(as_feature_dataset(data))
    with pytest.raises(ValueError, match="UDDH"):
        TRAINERS["dmsfh"](features, 16, 0, {})


def test_paper_preset_is_the_papers_setting() -> None:
    paper = DMSFHConfig.paper(32, epochs=10)
    assert (paper.bits, paper.epochs, paper.batch_size, paper.optimizer) == (32, 10, 128, "sgd")
    assert DMSFHConfig.paper(32).epochs == 500
    assert paper.lr == pytest.approx(10**-1.5) and paper.final_lr == 1e-6
    assert (paper.alpha, paper.beta, paper.gamma) == (1.0, 1.0, 1.0)
    assert paper.text_hidden == (4096, 512) and paper.text_scales == (50, 30, 15, 10, 5)
    assert paper.views_per_item == 0  # the paper trains on whole texts only
    schedule = [DMSFHConfig.paper(16).learning_rate(e) for e in (0, 499)]
    assert schedule == pytest.approx([10**-1.5, 1e-6])
    assert DMSFHConfig.paper(16).learning_rate(250) == pytest.approx(10 ** ((-1.5 - 6) / 2), rel=0.02)


def test_paper_preset_trains_with_sgd_and_the_unnormalised_laplacian() -> None:
    data = make_synthetic_crossmodal(n=100, seed=13)
    config = DMSFHConfig.paper(16, epochs=2, image_hidden=(32,), text_hidden=(32, 16))
    assert config.optimizer == "sgd" and config.graph_laplacian == "unnormalized"
    hasher = train_dmsfh(data["image"], data["text"], data["labels"], config)
    assert [h["lr"] for h in hasher.history] == pytest.approx([10**-1.5, 1e-6])
    assert np.isfinite(hasher.history[-1]["objective"])
