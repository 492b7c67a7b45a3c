"""UDDH trainer: each discrete step (Eq. 12, 16, 19, 22), re-seeding, training, ONNX parity, input checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from index.bundle import load_bundle
from index.centers import kmeans_loss, nearest_centers, reseed_empty_clusters, update_centers
from index.codes import to_signs
from tests.support.synthetic import as_feature_dataset, make_synthetic_crossmodal
from training.bundle.writer import write_bundle
from training.evaluation.metrics import evaluate_codes, relevance
from training.featurize.pipeline import featurize
from training.methods import uddh
from training.methods.deep import Monitor
from training.methods.uddh import (
    SameClusterAffinity,
    UDDHConfig,
    hash_loss,
    reconstruction_loss,
    specific_objective,
    train_uddh,
    update_shared_codes,
    update_specific_codes,
)

# Small networks and few steps: every test trains in seconds on two CPU cores.
SMALL = {
    "image_hidden": (64,),
    "text_hidden": (64,),
    "head_hidden": 32,
    "batch_size": 64,
    "epochs_per_iteration": 2,
    "lr_step_epochs": 1,
}


def small_config(**overrides) -> UDDHConfig:
    return UDDHConfig(
        **({"shared_bits": 16, "specific_bits": 8, "n_clusters": 6, "outer_iterations": 5} | SMALL | overrides)
    )


def random_signs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)


def random_assignments(rng: np.random.Generator, n: int, k: int, e: int) -> np.ndarray:
    return np.stack([rng.choice(k, size=e, replace=False) for _ in range(n)])


# -- Eq. 12: shared codes -------------------------------------------------------------------------------


@pytest.mark.parametrize("center_weight", [1.0, 0.3, 0.0])
def test_eq12_shared_codes_minimise_eq10_bit_by_bit(center_weight: float) -> None:
    rng = np.random.default_rng(0)
    n, bits, k = 30, 16, 4
    outputs = [np.tanh(rng.normal(size=(n, bits))) for _ in range(2)]
    centers, assignments = random_signs(rng, k, bits), random_assignments(rng, n, k, 1)
    codes = update_shared_codes(outputs, centers, assignments, center_weight)

    def eq10(b: np.ndarray) -> float:
        fit = sum(float(((o - b) ** 2).sum()) for o in outputs)
        return fit + center_weight * kmeans_loss(b, centers, assignments)

    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
    best = eq10(codes)
    for i, j in itertools.product(range(n), range(bits)):  # no single flip improves: Eq. 10 is separable
        flipped = codes.copy()
        flipped[i, j] *= -1
        assert eq10(flipped) >= best
    if center_weight == 1.0:  # the paper's Eq. 12 as printed
        assert np.array_equal(codes, update_shared_codes(outputs, centers, assignments))


# -- Eq. 16: centers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "top_e"), [(s, e) for s in range(5) for e in (1, 2, 3)])
def test_eq16_never_increases_kmeans_error(seed: int, top_e: int) -> None:
    rng = np.random.default_rng(seed)
    codes, centers = random_signs(rng, 50, 16), random_signs(rng, 7, 16)
    assignments = random_assignments(rng, 50, 7, top_e)
    before = kmeans_loss(codes, centers, assignments)
    updated = update_centers(codes, centers, assignments)
    assert updated.dtype == np.int8 and set(np.unique(updated)) <= {-1, 1}
    assert kmeans_loss(codes, updated, assignments) <= before
    # and so does a second sweep started from the first one's result
    assert kmeans_loss(codes, update_centers(codes, updated, assignments), assignments) <= kmeans_loss(
        codes, updated, assignments
    )


def test_eq16_with_one_center_per_item_is_the_members_majority_vote() -> None:
    rng = np.random.default_rng(1)
    codes, centers = random_signs(rng, 41, 12), random_signs(rng, 5, 12)
    assignments = rng.integers(0, 5, size=(41, 1))
    updated = update_centers(codes, centers, assignments)
    for c in range(5):
        votes = codes[assignments[:, 0] == c].astype(int).sum(0)
        expected = np.where(votes > 0, 1, np.where(votes < 0, -1, centers[c]))  # ties keep the bit
        assert np.array_equal(updated[c], expected)


# -- Eq. 19: assignment ----------------------------------------------------------------------------------


def test_eq19_picks_the_nearest_centers_like_brute_force() -> None:
    rng = np.random.default_rng(2)
    codes, centers = random_signs(rng, 200, 16), random_signs(rng, 9, 16)
    dist = np.array([[int((b != c).sum()) for c in centers] for b in codes])
    nearest = nearest_centers(codes, centers)
    assert nearest.shape == (200, 1)
    assert np.array_equal(nearest[:, 0], [int(np.flatnonzero(row == row.min())[0]) for row in dist])
    top = nearest_centers(codes, centers, 3)
    for row, picked in zip(dist, top, strict=True):
        assert len(set(picked)) == 3
        assert list(row[picked]) == sorted(row)[:3]  # the three smallest distances, nearest first


# -- empty clusters --------------------------------------------------------------------------------------


def test_empty_clusters_are_reseeded_from_the_farthest_member() -> None:
    rng = np.random.default_rng(3)
    near = random_signs(rng, 3, 16)
    codes = np.repeat(near, 10, axis=0)
    codes[7, :5] *= -1  # the worst-fitting item: 5 bits from its own center
    centers = np.vstack([near, -near[:1], -near[1:2]])  # centers 3 and 4 attract nothing
    assignments = nearest_centers(codes, centers)
    assert np.bincount(assignments.ravel(), minlength=5).tolist() == [10, 10, 10, 0, 0]
    reseeded_centers, reseeded = reseed_empty_clusters(codes, centers, assignments)
    assert np.bincount(reseeded.ravel(), minlength=5).min() >= 1
    assert np.array_equal(reseeded_centers[3], codes[7]) and reseeded[7, 0] == 3  # the farthest member
    assert kmeans_loss(codes, reseeded_centers, reseeded) < kmeans_loss(codes, centers, assignments)


def test_reseeding_with_several_centers_per_item_keeps_each_items_centers_distinct() -> None:
    rng = np.random.default_rng(4)
    codes, centers = random_signs(rng, 12, 16), random_signs(rng, 6, 16)
    assignments = np.stack([np.arange(12) % 3, (np.arange(12) + 1) % 3], axis=1)  # clusters 3–5 empty
    _, reseeded = reseed_empty_clusters(codes, centers, assignments)
    assert np.bincount(reseeded.ravel(), minlength=6).min() >= 1
    assert reseeded.shape == (12, 2) and all(len(set(row)) == 2 for row in reseeded)


# -- Eq. 8 and 22: specific codes ------------------------------------------------------------------------


@pytest.fixture
def specific_problem() -> dict:
    rng = np.random.default_rng(4)
    n, bits = 40, 8
    assignments = rng.integers(0, 4, size=(n, 1))
    return {
        "features": [rng.normal(size=(n, 5)), rng.normal(size=(n, 6))],
        "assignments": assignments,
        "outputs": [np.tanh(rng.normal(size=(n, bits))) for _ in range(2)],
        "codes": [random_signs(rng, n, bits) for _ in range(2)],
    }


def test_affinity_only_links_items_of_the_same_cluster(specific_problem: dict) -> None:
    feats, assignments = specific_problem["features"], specific_problem["assignments"]
    graph = SameClusterAffinity(feats, assignments)
    same = assignments[:, 0][:, None] == assignments[:, 0][None, :]
    dense = sum(
        np.exp(-((f[:, None, :] - f[None, :, :]) ** 2).sum(-1) / s)
        for f, s in zip(feats, graph.two_sigma_sq, strict=True)
    )
    pairs = np.where(same & ~np.eye(40, dtype=bool), dense, 0.0)  # Eq. 8: zero across clusters
    degree = pairs.sum(1)
    expected = 2 * np.eye(40) + pairs / np.sqrt(degree[:, None] * degree[None, :])  # self pairs: A_1^pp + A_2^pp
    m = np.random.default_rng(5).normal(size=(40, 3))
    np.testing.assert_allclose(graph.product(m), expected @ m, rtol=1e-10, atol=1e-12)


def test_one_network_cannot_pull_an_items_specific_codes_apart_but_both_networks_move_them() -> None:
    """The self pair keeps its Eq. 8 weight (A_1^pp + A_2^pp = 2): an item alone in its cluster keeps its
    image and text specific codes equal against a confident image network (they drifted to 71 % agreement
    when the self pair was normalised with the other pairs), while the joint proposal lets the two
    networks flip a bit together (with the self pair alone, the codes froze at their start)."""
    rng = np.random.default_rng(6)
    n, bits = 12, 8
    graph = SameClusterAffinity([rng.normal(size=(n, 4)), rng.normal(size=(n, 3))], np.arange(n)[:, None])
    codes = random_signs(rng, n, bits)
    against, along = -0.99 * codes, 0.5 * codes
    # the image network disagrees, the text network agrees more strongly: the pair stays together
    image, text = update_specific_codes([-0.6 * codes, 0.9 * codes], [codes, codes], graph, 1.0)
    assert np.array_equal(image, codes) and np.array_equal(text, codes)
    # the networks' sum decides a shared bit, never one network alone
    image, text = update_specific_codes([against, along], [codes, codes], graph, 1.0)
    assert np.array_equal(image, -codes) and np.array_equal(text, -codes)
    image, text = update_specific_codes([against, against], [codes, codes], graph, 1.0)
    assert np.array_equal(image, -codes) and np.array_equal(text, -codes)
    # without the coupling, each modality follows its own network and the item's codes disagree
    image, text = update_specific_codes([against, along], [codes, codes], graph, 0.0)
    assert np.array_equal(image, -codes) and np.array_equal(text, codes)


def test_eq22_codes_are_signs_and_never_increase_their_objective(specific_problem: dict) -> None:
    p = specific_problem
    graph = SameClusterAffinity(p["features"], p["assignments"])
    for weight in (0.0, 1.0, 5.0):
        before = specific_objective(p["outputs"], p["codes"], graph, weight)
        image, text = update_specific_codes(p["outputs"], p["codes"], graph, weight)
        for codes in (image, text):
            assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
        after = specific_objective(p["outputs"], [image, text], graph, weight)
        assert after <= before + 1e-9
        # the text step is the exact block minimiser: no single text bit flip lowers the objective
        for i, j in itertools.product(range(0, 40, 7), range(8)):
            flipped = text.copy()
            flipped[i, j] *= -1
            assert specific_objective(p["outputs"], [image, flipped], graph, weight) >= after - 1e-9


# -- the network losses (Eq. 3–4) ---------------------------------------------------------------------------


def test_hash_and_reconstruction_losses_by_hand() -> None:
    shared, shared_codes = np.array([[0.5, -1.0], [0.0, 0.0]]), np.array([[1, -1], [-1, 1]])
    specific, specific_codes = np.array([[0.2], [1.0]]), np.array([[-1], [1]])
    # item 0: 0.25 + 0 + 1.44;  item 1: 1 + 1 + 0
    assert hash_loss(shared, specific, shared_codes, specific_codes) == pytest.approx([1.69, 2.0])
    decoded, scaled = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert reconstruction_loss(decoded, scaled).tolist() == pytest.approx([5.0, 4.0])


def test_the_training_step_computes_its_loss_with_the_tested_functions(monkeypatch) -> None:
    calls = {"hash_loss": 0, "reconstruction_loss": 0}

    def counted(name: str):
        original = getattr(uddh, name)

        def wrapper(*args):
            calls[name] += 1
            return original(*args)

        return wrapper

    for name in calls:
        monkeypatch.setattr(uddh, name, counted(name))
    data = make_synthetic_crossmodal(n=100, seed=4)
    train_uddh(data["image"], data["text"], small_config(outer_iterations=1, epochs_per_iteration=1))
    # one outer iteration: 2 minibatches of 64 per network (+ 2 history records); the decoder is the text's
    assert calls == {"hash_loss": 2 * 2 + 2, "reconstruction_loss": 2 + 1}


# -- training --------------------------------------------------------------------------------------------

TRAIN, QUERY = slice(0, 600), slice(600, 700)


@pytest.fixture(scope="module")
def synthetic_run() -> tuple[dict, object]:
    """Ten latent classes (label prior ≈ 0.45); somewhat wider networks than SMALL so retrieval is learned."""
    data = make_synthetic_crossmodal(n=700, n_classes=10, seed=1)
    config = small_config(n_clusters=10, image_hidden=(128,), text_hidden=(128,), head_hidden=64, batch_size=32)
    return data, train_uddh(data["image"][TRAIN], data["text"][TRAIN], config, seed=0)


def test_training_loss_decreases_and_retrieval_beats_the_label_prior(synthetic_run) -> None:
    data, result = synthetic_run
    objective = [h["objective"] for h in result.hasher.history]
    assert len(objective) == 5 and objective[-1] < 0.5 * objective[0]
    assert all(b < a for a, b in itertools.pairwise(objective))
    labels_q, labels_db = data["labels"][QUERY], data["labels"][TRAIN]  # labels only to evaluate
    prior = float(relevance(labels_q, labels_db).mean())
    encode = {m: result.hasher.encoders[m].real_codes for m in ("image", "text")}
    i2t = evaluate_codes(
        to_signs(encode["image"](data["image"][QUERY])),
        to_signs(encode["text"](data["text"][TRAIN])),
        labels_q,
        labels_db,
    )
    t2i = evaluate_codes(
        to_signs(encode["text"](data["text"][QUERY])),
        to_signs(encode["image"](data["image"][TRAIN])),
        labels_q,
        labels_db,
    )
    assert i2t["mAP"] > prior + 0.1 and t2i["mAP"] > prior + 0.1


def test_result_holds_centers_and_a_nonempty_semantic_index(synthetic_run) -> None:
    _, result = synthetic_run
    assert result.hasher.method == "uddh" and result.hasher.bits == 24
    assert result.centers.shape == (10, 16) and result.centers.dtype == np.int8
    assert set(np.unique(result.centers)) <= {-1, 1}
    assert result.hasher.head_bits == 16 and np.array_equal(result.hasher.centers, result.centers)
    assert result.assignments.shape == (600, 1)
    assert np.bincount(result.assignments[:, 0], minlength=10).min() >= 1


def test_onnx_graph_gives_the_trainers_codes_bit_for_bit(synthetic_run) -> None:
    data, result = synthetic_run
    for modality in ("image", "text"):
        encoder = result.hasher.encoders[modality]
        session = ort.InferenceSession(encoder.onnx_graph().SerializeToString())
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, inp.shape, inp.type) == ("features", ["batch", encoder.input_dim], "tensor(float)")
        assert (out.name, out.shape) == ("codes", ["batch", 24])
        x = data[modality].astype(np.float32)
        onnx_codes = session.run(None, {"features": x})[0]
        trainer_codes = encoder.real_codes(x)
        np.testing.assert_allclose(onnx_codes, trainer_codes, rtol=0, atol=1e-12)
        assert np.array_equal(to_signs(onnx_codes), to_signs(trainer_codes))


def test_bundle_round_trip_keeps_codes_and_centers(tmp_path: Path) -> None:
    data = make_synthetic_crossmodal(n=300)
    data["text"][:5] = 0.0  # empty texts in training are fine
    features = featurize(as_feature_dataset(data))
    image, text, _ = features.part("train")
    config = small_config(outer_iterations=2, n_clusters=4)
    result = train_uddh(image, text, config, seed=0)
    write_bundle(tmp_path / "uddh", result.hasher, features, {})
    bundle = load_bundle(tmp_path / "uddh")
    for modality, x in (("image", features.image), ("text", features.text)):
        trainer = to_signs(result.hasher.encoders[modality].real_codes(x))
        assert np.array_equal(bundle.signs(modality, x), trainer)
    assert np.array_equal(bundle.centers, result.centers)
    assert bundle.manifest.semantic_index.head_bits == 16
    assert bundle.manifest.semantic_index.source == "uddh head code"


def test_progress_and_eval_fn_land_in_history() -> None:
    data = make_synthetic_crossmodal(n=120, seed=2)
    calls = []

    def eval_fn(hasher) -> float:
        calls.append(hasher.bits)
        return 0.5

    result = train_uddh(
        data["image"], data["text"], small_config(outer_iterations=2), monitor=Monitor(progress=True, eval_fn=eval_fn)
    )
    assert calls == [24, 24] and [h["eval"] for h in result.hasher.history] == [0.5, 0.5]


def test_seeded_runs_are_reproducible() -> None:
    data = make_synthetic_crossmodal(n=150, seed=3)
    config = small_config(outer_iterations=2)
    runs = [train_uddh(data["image"], data["text"], config, seed=s) for s in (7, 7, 8)]
    codes = [to_signs(r.hasher.encoders["image"].real_codes(data["image"])) for r in runs]
    assert np.array_equal(codes[0], codes[1]) and np.array_equal(runs[0].centers, runs[1].centers)
    assert runs[0].hasher.history == runs[1].hasher.history
    assert not np.array_equal(codes[0], codes[2])


# -- bad input -------------------------------------------------------------------------------------------


def _bad(kind: str) -> tuple[np.ndarray, np.ndarray]:
    data = make_synthetic_crossmodal(n=40, seed=4)
    image, text = data["image"], data["text"]
    if kind == "nan":
        image[3, 2] = np.nan
    elif kind == "inf":
        text[1, 0] = np.inf
    elif kind == "rows":
        text = text[:-1]
    elif kind == "zero image":
        image = np.zeros_like(image)
    elif kind == "zero text":
        text = np.zeros_like(text)
    return image, text


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "NaN or inf"),
        ("inf", "NaN or inf"),
        ("rows", "paired row by row"),
        ("zero image", "every image training row has zero norm"),
        ("zero text", "every text training row has zero norm"),
    ],
)
def test_bad_features_are_refused_before_training(kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_uddh(*_bad(kind), small_config())


def test_more_clusters_than_items_is_refused() -> None:
    with pytest.raises(ValueError, match=r"41 clusters \(k\) requested but only 40"):
        train_uddh(*_bad("none"), small_config(n_clusters=41))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"shared_bits": 12}, "multiple of 8"),
        ({"shared_bits": 0}, "multiple of 8"),
        ({"top_e": 7}, "top_e"),
        ({"specific_bits": 0}, "specific_bits"),
        ({"center_weight": -1.0}, "center_weight"),
    ],
)
def test_bad_configs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_config(**fields)


def test_paper_preset_is_the_papers_schedule() -> None:
    paper = UDDHConfig.paper(32, 32, 64)
    assert (paper.batch_size, paper.epochs_per_iteration, paper.lr_step_epochs, paper.outer_iterations) == (
        20,
        5,
        3,
        10,
    )
    assert (paper.image_lr, paper.text_lr, paper.weight_decay, paper.lr_step_factor) == (3e-4, 3e-3, 1e-4, 0.1)
