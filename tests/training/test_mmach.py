"""MMACH trainer: each loss term by hand, triplet mining, the attention, gradients, training, ONNX parity,
ablations and input checks."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from index.bundle import load_bundle
from index.codes import to_signs
from tests.support.synthetic import as_feature_dataset, make_synthetic_crossmodal
from training.bundle.writer import write_bundle
from training.evaluation.metrics import evaluate_codes, relevance
from training.featurize.pipeline import featurize
from training.methods.deep import Monitor
from training.methods.mmach import (
    LabelNet,
    MMACHConfig,
    build_networks,
    cross_modal_triplet_loss,
    enhance_labels,
    label_cosine,
    mine_triplets,
    mse_pair_loss,
    quantization_loss,
    shared_label_counts,
    step_objective,
    train_mmach,
    triplet_loss,
    triplet_mask,
    unified_codes,
)
from training.registry import TRAINERS

# Small networks and few epochs: every training run here takes a few seconds on one CPU core.
# Few minibatches per epoch, so a larger learning rate than the default.
SMALL = {"encoder_dim": 64, "hash_hidden": (128,), "label_hidden": 128, "batch_size": 64, "epochs": 8}
SMALL |= {"lr": 1e-2, "final_lr": 1e-4}
TRAIN, QUERY = slice(0, 600), slice(600, 700)


def small_config(**overrides) -> MMACHConfig:
    return MMACHConfig(**({"bits": 16} | SMALL | overrides))


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# -- triplet mining (Eq. 4–6) ----------------------------------------------------------------------------


def test_mining_finds_exactly_the_hand_listed_triplets() -> None:
    labels = t64([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1]])
    shared = shared_label_counts(labels, labels)
    # |y_a ∧ y_b| written out: row a lists the counts with items 0..3
    assert shared.tolist() == [[2, 1, 0, 2], [1, 1, 0, 1], [0, 0, 1, 1], [2, 1, 1, 3]]
    expected = {
        # anchor 0: items 0 and 3 share 2 labels, item 1 shares 1, item 2 none
        (0, 0, 1), (0, 0, 2), (0, 3, 1), (0, 3, 2), (0, 1, 2),
        # anchor 1: items 0, 1, 3 share 1, item 2 none
        (1, 0, 2), (1, 1, 2), (1, 3, 2),
        # anchor 2: items 2, 3 share 1, items 0, 1 none
        (2, 2, 0), (2, 2, 1), (2, 3, 0), (2, 3, 1),
        # anchor 3: itself 3, item 0 2, items 1, 2 one each
        (3, 3, 0), (3, 3, 1), (3, 3, 2), (3, 0, 1), (3, 0, 2),
    }  # fmt: skip
    assert {tuple(t) for t in mine_triplets(shared).tolist()} == expected


def test_every_mined_triplet_orders_shared_labels_and_none_is_missed() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 6)) < 0.35).astype(np.float64)
    counts = labels @ labels.T
    mined = mine_triplets(shared_label_counts(t64(labels), t64(labels))).numpy()
    for a, p, n in mined:
        assert counts[a, p] > counts[a, n]  # |y_a ∧ y_p| > |y_a ∧ y_n|
    brute = sum(counts[a, p] > counts[a, n] for a, p, n in itertools.product(range(30), repeat=3))
    assert len(mined) == brute == len({tuple(t) for t in mined})
    assert triplet_mask(shared_label_counts(t64(labels), t64(labels))).sum() == brute


# -- loss terms by hand ----------------------------------------------------------------------------------


def test_triplet_loss_by_hand() -> None:
    anchors = t64([[1, 0], [0, 1]])
    others = t64([[1, 0], [0, 1], [-1, 0]])
    # squared distances: anchor 0 → others (0, 2, 4); anchor 1 → others (2, 0, 2)
    triplets = torch.tensor([[0, 1, 0], [0, 2, 1], [1, 1, 0]])
    # k = 2, margin 0.5 → γ = 1: max(0, 2 − 0 + 1) = 3, max(0, 4 − 2 + 1) = 3, max(0, 0 − 2 + 1) = 0
    # mean over 3 triplets and 2 bits: (3 + 3 + 0) / (3 · 2) = 1
    assert float(triplet_loss(anchors, others, triplets, margin=0.5)) == pytest.approx(1.0)
    # no triplets → 0, still differentiable
    empty = triplet_loss(anchors.requires_grad_(), others, torch.zeros((0, 3), dtype=torch.long), 0.5)
    assert empty.item() == 0.0 and empty.requires_grad


def test_cross_modal_triplet_loss_is_eq5_both_ways_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((12, 4)) < 0.4).astype(np.float64)
    h, f = np.tanh(rng.normal(size=(12, 8))), np.tanh(rng.normal(size=(12, 8)))
    counts, gamma = labels @ labels.T, 0.3 * 8

    def one_way(anchor: np.ndarray, other: np.ndarray) -> tuple[float, int]:
        total, count = 0.0, 0
        for a, p, n in itertools.product(range(12), repeat=3):
            if counts[a, p] > counts[a, n]:
                d_p, d_n = ((anchor[a] - other[p]) ** 2).sum(), ((anchor[a] - other[n]) ** 2).sum()
                total, count = total + max(0.0, d_p - d_n + gamma), count + 1
        return total, count

    (s1, c1), (s2, c2) = one_way(h, f), one_way(f, h)
    expected = s1 / (c1 * 8) + s2 / (c2 * 8)  # Eq. 5: H anchors vs F items + F anchors vs H items
    triplets = mine_triplets(shared_label_counts(t64(labels), t64(labels)))
    assert float(cross_modal_triplet_loss(t64(h), t64(f), triplets, margin=0.3)) == pytest.approx(expected)


def test_mse_pair_loss_and_label_cosine_by_hand() -> None:
    assert label_cosine(t64([[1, 0], [1, 1]]), t64([[1, 0], [1, 1]])).numpy() == pytest.approx(
        np.array([[1, 1 / np.sqrt(2)], [1 / np.sqrt(2), 1]])
    )
    x, y = t64([[1, 1], [1, -1]]), t64([[1, 1], [-1, 1]])
    similarity = t64([[1, 0.5], [0.5, 0]])
    # x·yᵀ / k = [[2, 0], [0, −2]] / 2 = [[1, 0], [0, −1]]; squared errors 0, 0.25, 0.25, 1 → mean 0.375
    assert float(mse_pair_loss(x, y, similarity)) == pytest.approx(0.375)


def test_quantization_loss_by_hand() -> None:
    b = t64([[1, -1]])
    f, g, h = t64([[0.5, -0.5]]), t64([[1, 1]]), t64([[-1, -1]])
    # ‖B − F‖² = 0.25 + 0.25, ‖B − G‖² = 0 + 4, ‖B − H‖² = 4 + 0; Eq. 9 divides by 3·n·k = 6
    assert float(quantization_loss(b, f, g, h)) == pytest.approx(8.5 / 6)
    assert float(quantization_loss(b, f)) == pytest.approx(0.5 / 6)  # one network's share, same weight


def test_unified_codes_are_the_sign_of_the_mean_eq7() -> None:
    f = np.array([[0.9, -0.2, 0.1, 0.0]])
    g = np.array([[0.1, -0.3, -0.5, 0.0]])
    h = np.array([[-0.5, 0.9, 0.1, 0.0]])
    # sums 0.5, 0.4, −0.3, 0 → +1, +1, −1, −1 (an exact zero maps to −1)
    codes = unified_codes(f, g, h)
    assert codes.dtype == np.int8 and codes.tolist() == [[1, 1, -1, -1]]


def test_step_objective_weights_quantization_by_alpha() -> None:
    config = small_config(alpha=0.6)
    labels = t64([[1, 0], [0, 1], [1, 1]])
    reps, label_reps = t64([[0.5, 0.5], [-0.5, 0.5], [0.1, 0.2]]), t64([[1, 1], [-1, 1], [1, -1]])
    codes = t64([[1, 1], [-1, 1], [1, 1]])
    terms = step_objective("image", reps, {"label": label_reps}, labels, codes, config)
    assert set(terms) == {"triplets", "triplet_image_label", "quantization", "loss"}
    assert float(terms["loss"]) == pytest.approx(float(terms["triplet_image_label"] + 0.6 * terms["quantization"]))
    assert int(terms["triplets"]) == len(mine_triplets(shared_label_counts(labels, labels)))
    with pytest.raises(ValueError, match="step must be one of"):
        step_objective("audio", reps, {}, labels, codes, config)


def test_label_step_sums_both_cross_modal_terms_and_the_labelnets_own() -> None:
    labels = t64([[1, 0], [0, 1], [1, 1]])
    h = t64([[0.5, 0.5], [-0.5, 0.5], [0.1, 0.2]])
    f, g = t64([[1, 1], [-1, 1], [1, -1]]), t64([[1, -1], [-1, -1], [1, 1]])
    codes = t64([[1, 1], [-1, 1], [1, 1]])
    triplets = mine_triplets(shared_label_counts(labels, labels))
    expected = {
        "triplet_image_label": cross_modal_triplet_loss(h, f, triplets, 0.5),  # J^IL, Eq. 5
        "triplet_text_label": cross_modal_triplet_loss(h, g, triplets, 0.5),  # J^TL, Eq. 6
        "triplet_label_label": cross_modal_triplet_loss(h, h, triplets, 0.5),  # J^LL (module notes)
    }
    terms = step_objective("label", h, {"image": f, "text": g}, labels, codes, small_config(margin=0.5))
    for key, value in expected.items():
        assert float(terms[key]) == pytest.approx(float(value))
    assert float(terms["loss"]) == pytest.approx(
        sum(float(v) for v in expected.values()) + 0.6 * float(terms["quantization"])
    )
    without = step_objective("label", h, {"image": f, "text": g}, labels, codes, small_config(label_self_loss=False))
    assert "triplet_label_label" not in without
    warmup = step_objective("label_warmup", h, {}, labels, None, small_config(margin=0.5))
    assert set(warmup) == {"triplets", "triplet_label_label", "loss"}
    assert float(warmup["loss"]) == pytest.approx(float(expected["triplet_label_label"]))


# -- the attention (Eq. 2–3) -----------------------------------------------------------------------------


def test_attention_weights_are_cosines_in_unit_interval_and_enhance_the_label_feature() -> None:
    rng = np.random.default_rng(2)
    f_e, g_e, h_e = (np.maximum(rng.normal(size=(5, 7)), 0) for _ in range(3))  # ReLU encoder outputs
    h_e[4] = 0.0  # a zero feature: attention 0, no division by zero
    h_a, a_il, a_tl = enhance_labels(t64(h_e), t64(f_e), t64(g_e))

    def cosine(u: np.ndarray, v: np.ndarray) -> float:
        norm = np.linalg.norm(u) * np.linalg.norm(v)
        return float(u @ v / norm) if norm else 0.0

    expected_il = [cosine(f_e[i], h_e[i]) for i in range(5)]
    expected_tl = [cosine(g_e[i], h_e[i]) for i in range(5)]
    assert a_il.numpy() == pytest.approx(expected_il) and a_tl.numpy() == pytest.approx(expected_tl)
    assert ((a_il >= 0) & (a_il <= 1)).all() and ((a_tl >= 0) & (a_tl <= 1)).all()
    assert float(a_il[4]) == 0.0 == float(a_tl[4])

    def unit(x: np.ndarray) -> np.ndarray:  # rows scaled to norm 1, a zero row stays zero
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    # Eq. 3 on the normalised features (the paper normalises them before the fusion)
    expected = unit(h_e) + np.array(expected_il)[:, None] * unit(f_e) + np.array(expected_tl)[:, None] * unit(g_e)
    assert h_a.numpy() == pytest.approx(expected)
    _, a_il, a_tl = enhance_labels(t64([[3, 0]]), t64([[2, 0]]), t64([[0, 5]]))
    assert float(a_il[0]) == pytest.approx(1.0) and float(a_tl[0]) == pytest.approx(0.0)


def test_labelnet_uses_the_modalities_only_with_the_attention_on() -> None:
    torch.manual_seed(0)
    labels = t64([[1, 0, 1], [0, 1, 0]]).float()
    f_e, g_e = torch.rand(2, 64), torch.rand(2, 64)
    for attention in (True, False):
        net = LabelNet(3, small_config(attention=attention))
        reps, a_il, a_tl = net(labels, f_e, g_e)
        other, _, _ = net(labels, f_e + 1.0, g_e)
        assert reps.shape == (2, 16) and (reps.abs() < 1).all()  # tanh representations
        if attention:
            assert a_il.shape == a_tl.shape == (2,) and not torch.equal(reps, other)
        else:  # MLSDCH: H^A = H^E, the image and text features are not used
            assert a_il is None and a_tl is None and torch.equal(reps, other)


def test_exported_hash_functions_take_the_modality_features_only(synthetic_run) -> None:
    _, hasher = synthetic_run
    for modality in ("image", "text"):
        encoder = hasher.encoders[modality]
        assert list(inspect.signature(encoder.net.forward).parameters) == ["x"]
        assert not any(isinstance(m, LabelNet) for m in encoder.net.modules())
        session = ort.InferenceSession(encoder.onnx_graph().SerializeToString())
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, inp.shape, inp.type) == ("features", ["batch", encoder.input_dim], "tensor(float)")
        assert (out.name, out.shape) == ("codes", ["batch", 16])


# -- gradients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["label", "image", "text"])
def test_each_step_trains_its_own_network_and_no_other(step: str) -> None:
    data = make_synthetic_crossmodal(n=40, seed=5)
    config = small_config()
    torch.manual_seed(0)
    nets = build_networks(data["image"], data["text"], data["labels"].shape[1], config)
    x = {m: torch.as_tensor(data[m], dtype=torch.float32) for m in ("image", "text")}
    labels = torch.as_tensor(data["labels"], dtype=torch.float32)
    with torch.no_grad():
        f_e, f = nets.image.parts(x["image"])
        g_e, g = nets.text.parts(x["text"])
        h, _, _ = nets.label(labels, f_e, g_e)
    if step == "label":
        reps, _, _ = nets.label(labels, f_e, g_e)
        fixed = {"image": f, "text": g}
    else:
        reps, fixed = nets[step](x[step]), {"label": h}
    codes = torch.as_tensor(unified_codes(f.numpy(), g.numpy(), h.numpy()), dtype=torch.float32)
    step_objective(step, reps, fixed, labels, codes, config)["loss"].backward()
    for name in ("label", "image", "text"):
        grads = [p.grad for p in nets[name].parameters()]
        if name == step:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), f"{name} parameters without gradient"
        else:
            assert all(g is None for g in grads), f"{step} step leaked gradients into the {name} network"
    if step == "label":  # E_L learns through h and through the attention weights
        assert nets.label.encoder[0].weight.grad.abs().sum() > 0


# -- training --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_run():
    """Ten latent classes (label prior ≈ 0.45); trained on the first 600 items, 100 held out as queries."""
    data = make_synthetic_crossmodal(n=700, n_classes=10, seed=1)
    return data, train_mmach(data["image"][TRAIN], data["text"][TRAIN], data["labels"][TRAIN], small_config())


def test_training_beats_the_label_prior_both_ways(synthetic_run) -> None:
    data, hasher = synthetic_run
    assert hasher.method == "mmach" and hasher.bits == 16 and set(hasher.encoders) == {"image", "text"}
    labels_q, labels_db = data["labels"][QUERY], data["labels"][TRAIN]  # labels only to evaluate
    prior = float(relevance(labels_q, labels_db).mean())

    def signs(modality: str, rows: slice) -> np.ndarray:
        return to_signs(hasher.encoders[modality].real_codes(data[modality][rows]))

    i2t = evaluate_codes(signs("image", QUERY), signs("text", TRAIN), labels_q, labels_db)
    t2i = evaluate_codes(signs("text", QUERY), signs("image", TRAIN), labels_q, labels_db)
    assert i2t["mAP"] > prior + 0.25 and t2i["mAP"] > prior + 0.25
    objective = [h["objective"] for h in hasher.history if "stage" not in h]
    assert len(objective) == 8 and objective[-1] < 0.5 * objective[0]


def test_history_records_the_warmup_then_every_term_per_epoch(synthetic_run) -> None:
    _, hasher = synthetic_run
    warmup, epochs = hasher.history[:3], hasher.history[3:]
    for epoch, record in enumerate(warmup, 1):
        assert set(record) == {"stage", "epoch", "lr", "triplets", "triplet_label_label", "loss"}
        assert (record["stage"], record["epoch"]) == ("label_warmup", epoch)
    assert warmup[-1]["loss"] < warmup[0]["loss"]
    expected = {"epoch", "iteration", "lr", "triplet_image_label", "triplet_text_label", "triplet_label_label"}
    expected |= {"objective", "label_step", "image_step", "text_step", "quantization", "bit_flips"}
    expected |= {"triplets_per_batch", "attention_image", "attention_text"}
    for epoch, record in enumerate(epochs, 1):
        assert set(record) == expected and record["epoch"] == epoch
        assert 0 <= record["attention_image"] <= 1 and record["triplets_per_batch"] > 0
    assert epochs[0]["lr"] == 1e-2 and epochs[-1]["lr"] == pytest.approx(1e-4)
    assert hasher.config == dataclasses.asdict(small_config()) | {"seed": 0}


@pytest.mark.parametrize(
    ("switches", "present", "absent"),
    [
        ({"attention": False}, {"triplet_image_label", "triplets_per_batch"}, {"attention_image", "attention_text"}),
        ({"pair_loss": "mse"}, {"mse_image_label", "mse_text_label", "attention_image"}, {"triplet_image_label"}),
    ],
)
def test_ablation_switches_change_what_history_records(switches: dict, present: set, absent: set) -> None:
    data = make_synthetic_crossmodal(n=120, seed=2)
    hasher = train_mmach(data["image"], data["text"], data["labels"], small_config(epochs=2, **switches))
    for record in hasher.history[3:]:
        assert present <= set(record) and not absent & set(record)
    assert hasher.config["attention"] is switches.get("attention", True)
    if switches.get("pair_loss") == "mse":
        assert "triplets_per_batch" not in hasher.history[-1]


def test_progress_and_eval_fn_land_in_history() -> None:
    data = make_synthetic_crossmodal(n=120, seed=2)
    calls = []

    def eval_fn(hasher) -> dict[str, float]:
        calls.append(len(hasher.history))
        return {"val_map_i2t": 0.5, "val_map_t2i": 0.25}

    args = (data["image"], data["text"], data["labels"], small_config(epochs=2, label_warmup_epochs=0))
    hasher = train_mmach(*args, monitor=Monitor(progress=True, eval_fn=eval_fn))
    assert calls == [1, 2]  # each call sees the history so far, its own epoch included
    assert [(h["val_map_i2t"], h["val_map_t2i"]) for h in hasher.history] == [(0.5, 0.25)] * 2
    assert [h["eval"] for h in train_mmach(*args, monitor=Monitor(eval_fn=lambda h: 0.75)).history] == [0.75, 0.75]


def test_seeded_runs_are_reproducible() -> None:
    data = make_synthetic_crossmodal(n=150, seed=3)
    args = (data["image"], data["text"], data["labels"], small_config(epochs=2))
    runs = [train_mmach(*args, seed=s) for s in (7, 7, 8)]
    codes = [{m: to_signs(r.encoders[m].real_codes(data[m])) for m in ("image", "text")} for r in runs]
    for m in ("image", "text"):
        assert np.array_equal(codes[0][m], codes[1][m])
    assert runs[0].history == runs[1].history
    assert not np.array_equal(codes[0]["image"], codes[2]["image"])


def test_bundle_round_trip_keeps_codes_bit_for_bit(tmp_path: Path) -> None:
    data = make_synthetic_crossmodal(n=300)
    data["text"][:5] = 0.0  # empty texts in training are fine
    features = featurize(as_feature_dataset(data))
    image, text, labels = features.part("train")
    hasher = train_mmach(image, text, labels, small_config(epochs=2))
    write_bundle(tmp_path / "mmach", hasher, features, {})
    bundle = load_bundle(tmp_path / "mmach")
    query_image, query_text, _ = features.part("query")
    for modality, x in (("image", query_image), ("text", query_text)):
        trainer = to_signs(hasher.encoders[modality].real_codes(x))
        assert np.array_equal(bundle.signs(modality, x), trainer)


# -- configs and bad input -------------------------------------------------------------------------------


def test_paper_preset_is_the_papers_setting() -> None:
    paper = MMACHConfig.paper(64)
    assert (paper.bits, paper.epochs, paper.batch_size, paper.optimizer) == (64, 200, 128, "sgd")
    assert (paper.lr, paper.final_lr, paper.alpha) == (10**-1.5, 1e-6, 0.6)
    assert (paper.encoder_dim, paper.hash_hidden, paper.label_hidden) == (512, (4096, 512), 8192)
    assert MMACHConfig.paper(16, epochs=3).epochs == 3
    rates = [paper.learning_rate(e) for e in range(200)]
    assert rates[0] == 10**-1.5 and rates[-1] == pytest.approx(1e-6)
    assert all(b < a for a, b in itertools.pairwise(rates))
    assert np.allclose(np.diff(np.log(rates)), np.log(rates[1] / rates[0]))  # geometric


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bits": 0}, "bits must be a positive integer"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"lr": 0.0}, "final_lr ≤ lr"),
        ({"final_lr": 1.0}, "final_lr ≤ lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"alpha": -1.0}, "non-negative"),
        ({"margin": 0.0}, "margin must be positive"),
        ({"hash_hidden": (0,)}, "sizes must be positive"),
        ({"attention": "no"}, "attention must be true or false"),
        ({"label_self_loss": 1}, "label_self_loss must be true or false"),
        ({"label_warmup_epochs": -1}, "label_warmup_epochs must be non-negative"),
        ({"pair_loss": "contrastive"}, "pair_loss must be one of"),
        ({"torch_threads": 0}, "torch_threads"),
    ],
)
def test_bad_configs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**fields)


def _bad(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = make_synthetic_crossmodal(n=40, seed=4)
    image, text, labels = data["image"], data["text"], data["labels"]
    if kind == "nan":
        image[3, 2] = np.nan
    elif kind == "rows":
        text = text[:-1]
    elif kind == "label rows":
        labels = labels[:-1]
    elif kind == "not multi-hot":
        labels = labels * 2
    elif kind == "empty class":
        labels[:, 0] = 0
    elif kind == "zero image":
        image = np.zeros_like(image)
    elif kind == "same labels":
        labels = np.ones_like(labels)
    return image, text, labels


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "NaN or inf"),
        ("rows", "paired row by row"),
        ("label rows", r"labels must have shape \(40, c\)"),
        ("not multi-hot", "multi-hot 0/1"),
        ("empty class", "empty class"),
        ("zero image", "every image training row has zero norm"),
        ("same labels", "nothing to order"),
    ],
)
def test_bad_input_is_refused_before_training(kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_mmach(*_bad(kind), small_config())


def test_registry_refuses_a_dataset_without_labels_and_points_to_uddh() -> None:
    features = featurize(as_feature_dataset(make_synthetic_crossmodal(n=120)))
    unlabelled = dataclasses.replace(features, labels=np.zeros_like(features.labels))
    with pytest.raises(ValueError, match=r"mmach is supervised.*UDDH"):
        TRAINERS["mmach"](unlabelled, 16, 0, {})
