"""AMSH trainer: each update step, the constraints, unpaired training, retrieval quality and input checks.

The similarity terms of Eq. 10 grow with the number of samples. The paper's λ = β = 1e-3 was tuned
on 16k–185k items. On the few hundred items here those terms are then too weak against η‖B − V‖²,
so these tests use 1e-2.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from index.codes import hamming_distances, to_signs
from tests.support.synthetic import make_synthetic_crossmodal
from training.evaluation.metrics import evaluate_codes
from training.methods import amsh
from training.methods.amsh import (
    AMSHConfig,
    KernelDesign,
    ModalityCodes,
    code_objective,
    draw_class_directions,
    function_objective,
    init_codes,
    learn_codes,
    learn_hash_function,
    predict,
    solve_orthogonal_centered,
    train_amsh,
    update_b,
    update_e,
    update_f,
    update_m,
    update_p,
    update_v,
)
from training.methods.base import TrainedHasher
from training.methods.kernel import KernelHashFunction, RBFKernelMap

SMALL = AMSHConfig(bits=16, n_anchors=150, lam=1e-2, beta=1e-2)
N_TRAIN = 500  # the synthetic fixture has 600 items: the last 100 are held-out queries


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_blas() -> Iterator[None]:
    """These problems are tiny, so BLAS threads only add synchronisation. On a busy 2-core machine that
    overhead dominates: this file takes ~4 s single-threaded and ~20 s with two spinning threads."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    labels = (rng.random((n, c)) < 0.3).astype(np.float64)
    labels[np.arange(n), rng.integers(0, c, n)] = 1.0
    return labels


def _tiny_codes(config: AMSHConfig) -> list[ModalityCodes]:
    """Two unpaired modalities (40 and 30 samples) moved off their optimum: random margins and P."""
    rng = np.random.default_rng(7)
    g = draw_class_directions(4, config.bits, rng)
    states = [
        init_codes(_labels(rng, 40, 4), rng.normal(size=(40, 5)), g, config, np.random.default_rng(1)),
        init_codes(_labels(rng, 30, 4), rng.normal(size=(30, 3)), g, config, np.random.default_rng(2)),
    ]
    for s in states:
        s.e = rng.random(s.e.shape)
        s.p = rng.normal(size=s.p.shape)
    return states


def _assert_feasible(v: np.ndarray) -> None:
    n, r = v.shape
    np.testing.assert_allclose(v.T @ v, n * np.eye(r), atol=1e-9 * n)
    np.testing.assert_allclose(v.sum(0), 0.0, atol=1e-9 * n)


def _non_increasing(values: list[float], rtol: float) -> bool:
    return all(later <= earlier * (1 + rtol) for earlier, later in itertools.pairwise(values))


def _precision_at(
    query: np.ndarray, query_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray, k: int = 20
) -> tuple[float, float]:
    """Top-k precision of the Hamming ranking, and the label prior (a random ranking's expected precision)."""
    relevant = query_labels @ db_labels.T > 0
    order = np.argsort(hamming_distances(query, db), axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(relevant, order, 1).mean()), float(relevant.mean())


# ---- step 1: hash codes ------------------------------------------------------------------------


def test_code_objective_is_eq10_computed_literally() -> None:
    config = dataclasses.replace(SMALL, bits=6, eta=0.7, lam=0.05, beta=0.02)
    states = _tiny_codes(config)
    r = config.bits
    expected = 0.0
    for s in states:
        similarity = s.unit_labels @ s.unit_labels.T  # n × n is fine at this size
        expected += ((s.labels + s.signs * s.e - s.v @ s.p) ** 2).sum()
        expected += config.eta * ((s.b - s.v) ** 2).sum()
        expected += config.lam * ((s.b @ s.v.T - r * similarity) ** 2).sum()
    a, b = states
    expected += config.beta * ((a.v @ b.v.T - r * a.unit_labels @ b.unit_labels.T) ** 2).sum()
    assert code_objective(states, config)["objective"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("step", ["P", "V", "B", "E"])
def test_each_code_update_does_not_increase_the_objective(step: str) -> None:
    config = dataclasses.replace(SMALL, bits=6)
    states = _tiny_codes(config)
    rng = np.random.default_rng(0)
    for i, s in enumerate(states):
        before = code_objective(states, config)["objective"]
        if step == "P":
            s.p = update_p(s)
        elif step == "V":
            s.v = update_v(s, states[:i] + states[i + 1 :], config, rng)
        elif step == "B":
            s.b = update_b(s, config)
        else:
            s.e = update_e(s)
        assert code_objective(states, config)["objective"] <= before * (1 + 1e-12)


def test_v_step_is_the_feasible_maximiser_of_theorem_3_1() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 8))
    v = solve_orthogonal_centered(z, rng)
    _assert_feasible(v)
    # The maximum of tr(ZᵀV) over the constraint set is √n times the nuclear norm of the centred Z.
    optimum = np.sqrt(50) * np.linalg.svd(z - z.mean(0), compute_uv=False).sum()
    assert (z * v).sum() == pytest.approx(optimum, rel=1e-10)
    for _ in range(20):
        other = solve_orthogonal_centered(rng.normal(size=z.shape), rng)  # another feasible point
        assert (z * other).sum() < (z * v).sum()


def test_v_step_fills_a_rank_deficient_target_feasibly() -> None:
    rng = np.random.default_rng(0)
    z = np.outer(rng.normal(size=50), rng.normal(size=8)) + 3.0  # rank 1, plus a constant that J removes
    v = solve_orthogonal_centered(z, rng)
    _assert_feasible(v)
    optimum = np.sqrt(50) * np.linalg.svd(z - z.mean(0), compute_uv=False).sum()
    assert (z * v).sum() == pytest.approx(optimum, rel=1e-10)


def test_learned_codes_satisfy_the_constraints(synthetic: dict[str, np.ndarray]) -> None:
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    states, history = learn_codes(
        [synthetic["labels"]] * 2,
        [synthetic["image"], synthetic["text"]],
        SMALL,
        rngs,
        np.random.default_rng(2),
    )
    assert len(history) == SMALL.iterations
    for s in states:
        assert set(np.unique(s.b)) == {-1.0, 1.0}
        assert (s.e >= 0).all()
        _assert_feasible(s.v)


def _hierarchical_labels(rng: np.random.Generator, n: int, shares=(0.6, 0.3, 0.1), subs: int = 3) -> np.ndarray:
    """Product-catalogue labels: an imbalanced top-level category per item, and for 80% of the items also
    one of its subcategories (columns: top levels, then each top level's subcategories)."""
    tops = len(shares)
    labels = np.zeros((n, tops * (1 + subs)))
    top = rng.choice(tops, n, p=shares)
    labels[np.arange(n), top] = 1.0
    sub = rng.random(n) < 0.8
    labels[np.flatnonzero(sub), tops + subs * top[sub] + rng.integers(0, subs, sub.sum())] = 1.0
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step1_codes_of_both_modalities_share_one_basis(seed: int) -> None:
    """Regression: V_0 used to come from each modality's own content features alone. When both
    modalities' features carry the labels (in different bases), each started label-aware in its own
    basis, and the coupled iterations kept them there: each modality's codes ranked its own items
    perfectly (mAP ≈ 1) but the other modality's at 0.79–0.91 here (0.50–0.57 on OpenClipart).
    The shared class directions of the initialisation start both modalities in one basis."""
    rng = np.random.default_rng(seed)
    n = 300
    labels = _hierarchical_labels(rng, n)
    image = labels @ rng.normal(size=(12, 30)) + rng.normal(size=(n, 30))
    text = np.maximum(labels @ rng.normal(size=(12, 50)) + rng.normal(size=(n, 50)), 0)
    order = rng.permutation(n)  # unpaired: the text rows in another order
    text_labels = labels[order]
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    states, _ = learn_codes([labels, text_labels], [image, text[order]], SMALL, rngs, np.random.default_rng(2))
    b_image, b_text = (to_signs(s.b) for s in states)
    within = evaluate_codes(b_image, b_image, labels, labels)["mAP"]
    image_to_text = evaluate_codes(b_image, b_text, labels, text_labels)["mAP"]
    text_to_image = evaluate_codes(b_text, b_image, text_labels, labels)["mAP"]
    assert within > 0.99
    assert min(image_to_text, text_to_image) > 0.99, (image_to_text, text_to_image)


# ---- step 2: hash functions --------------------------------------------------------------------


def _tiny_design(rng: np.random.Generator) -> tuple[KernelDesign, np.ndarray]:
    x = rng.normal(size=(80, 5))
    _, phi = RBFKernelMap.fit_transform(x, 30, rng)
    codes = to_signs(rng.normal(size=(80, 6))).astype(np.float64)
    return KernelDesign.build(phi, ridge=0.01), codes


def test_each_function_update_does_not_increase_the_objective() -> None:
    rng = np.random.default_rng(0)
    design, b = _tiny_design(rng)
    m = rng.random(b.shape)
    w, offset = rng.normal(size=(30, 6)), rng.normal(size=6)
    before = function_objective(design, b, m, w, offset)
    w, offset = update_f(design, b, m)
    after_f = function_objective(design, b, m, w, offset)
    assert after_f <= before
    m = update_m(b, predict(design, w, offset))
    assert function_objective(design, b, m, w, offset) <= after_f
    assert (m >= 0).all()


def test_f_step_is_the_exact_minimiser() -> None:
    rng = np.random.default_rng(1)
    design, b = _tiny_design(rng)
    m = rng.random(b.shape)
    w, offset = update_f(design, b, m)
    best = function_objective(design, b, m, w, offset)
    for _ in range(20):
        dw, db = 1e-3 * rng.normal(size=w.shape), 1e-3 * rng.normal(size=offset.shape)
        assert function_objective(design, b, m, w + dw, offset + db) > best


def test_hash_function_objective_decreases_and_margins_stay_nonnegative() -> None:
    design, b = _tiny_design(np.random.default_rng(2))
    _, _, m, objectives = learn_hash_function(design, b, SMALL)
    assert len(objectives) == SMALL.function_iterations
    assert _non_increasing(objectives, rtol=1e-12)
    assert (m >= 0).all()


# ---- the trainer -------------------------------------------------------------------------------
# Trained models are shared across tests (module scope): a training is the slow part of this file.


def _train_split() -> dict[str, np.ndarray]:
    """The synthetic fixture's data: the first N_TRAIN items train, the rest are held-out queries."""
    return make_synthetic_crossmodal()


@pytest.fixture(scope="module")
def text_order() -> np.ndarray:
    return np.random.default_rng(5).permutation(N_TRAIN)


@pytest.fixture(scope="module")
def paired_model() -> TrainedHasher:
    data = _train_split()
    labels = data["labels"][:N_TRAIN]
    return train_amsh(data["image"][:N_TRAIN], labels, data["text"][:N_TRAIN], labels, SMALL)


@pytest.fixture(scope="module")
def shuffled_model(text_order: np.ndarray) -> TrainedHasher:
    """Same items as ``paired_model``, with the text rows (and their labels) in another order."""
    data = _train_split()
    labels = data["labels"][:N_TRAIN]
    text = data["text"][:N_TRAIN]
    return train_amsh(data["image"][:N_TRAIN], labels, text[text_order], labels[text_order], SMALL)


def test_training_history_decreases_in_both_steps(paired_model: TrainedHasher) -> None:
    assert paired_model.method == "amsh" and paired_model.bits == SMALL.bits
    assert paired_model.config["seed"] == 0 and paired_model.config["lam"] == SMALL.lam
    for stage, count in (("codes", SMALL.iterations), ("hash_functions", SMALL.function_iterations)):
        values = [h["objective"] for h in paired_model.history if h["stage"] == stage]
        assert len(values) == count
        assert _non_increasing(values, rtol=1e-10)
        assert values[-1] < values[0]


def test_exported_encoder_reproduces_the_fitted_regression(synthetic: dict[str, np.ndarray]) -> None:
    """The intercept fitted on centred features is exported as a bias on raw kernel features."""
    rng = np.random.default_rng(0)
    x = synthetic["image"]
    kernel, phi = RBFKernelMap.fit_transform(x, 100, rng)
    design = KernelDesign.build(phi, SMALL.ridge)
    b = to_signs(rng.normal(size=(x.shape[0], 8))).astype(np.float64)
    w, offset, _, _ = learn_hash_function(design, b, SMALL)
    encoder = KernelHashFunction(kernel=kernel, projection=w, bias=offset - design.mean @ w)
    np.testing.assert_allclose(encoder.real_codes(x), predict(design, w, offset), atol=1e-8)


def test_step1_codes_follow_their_rows_not_the_other_modality(synthetic: dict[str, np.ndarray]) -> None:
    """Permuting the text rows permutes the text codes and leaves the image codes untouched."""
    image, text, labels = (synthetic[k][:200] for k in ("image", "text", "labels"))
    perm = np.random.default_rng(5).permutation(200)
    config = dataclasses.replace(SMALL, iterations=8)
    paired, _ = learn_codes(
        [labels, labels],
        [image, text],
        config,
        [np.random.default_rng(0), np.random.default_rng(1)],
        np.random.default_rng(2),
    )
    shuffled, _ = learn_codes(
        [labels, labels[perm]],
        [image, text[perm]],
        config,
        [np.random.default_rng(0), np.random.default_rng(1)],
        np.random.default_rng(2),
    )
    np.testing.assert_array_equal(shuffled[0].b, paired[0].b)
    np.testing.assert_array_equal(shuffled[1].b, paired[1].b[perm])


def test_unpaired_training_never_reads_the_pairing(paired_model: TrainedHasher, shuffled_model: TrainedHasher) -> None:
    """Shuffling the text rows (with their labels) leaves the image hash function as it was."""
    a, b = paired_model.encoders["image"], shuffled_model.encoders["image"]
    np.testing.assert_array_equal(b.kernel.anchors, a.kernel.anchors)
    queries = _train_split()["image"][N_TRAIN:]
    np.testing.assert_allclose(b.real_codes(queries), a.real_codes(queries), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(to_signs(b.real_codes(queries)), to_signs(a.real_codes(queries)))


@pytest.mark.parametrize("mode", ["paired", "unpaired", "unpaired_different_counts"])
def test_codes_are_discriminative_across_modalities(
    request: pytest.FixtureRequest, text_order: np.ndarray, mode: str
) -> None:
    data = _train_split()
    image, labels = data["image"][:N_TRAIN], data["labels"][:N_TRAIN]
    text_rows = {
        "paired": np.arange(N_TRAIN),
        "unpaired": text_order,
        "unpaired_different_counts": np.random.default_rng(3).permutation(N_TRAIN)[:320],
    }[mode]
    text, text_labels = data["text"][text_rows], data["labels"][text_rows]
    if mode == "unpaired_different_counts":
        hasher = train_amsh(image, labels, text, text_labels, SMALL)
    else:
        hasher = request.getfixturevalue("paired_model" if mode == "paired" else "shuffled_model")

    query_labels = data["labels"][N_TRAIN:]
    queries = {m: to_signs(hasher.encoders[m].real_codes(data[m][N_TRAIN:])) for m in ("image", "text")}
    db = {
        "image": to_signs(hasher.encoders["image"].real_codes(image)),
        "text": to_signs(hasher.encoders["text"].real_codes(text)),
    }
    for query, target, db_labels in (("image", "text", text_labels), ("text", "image", labels)):
        precision, prior = _precision_at(queries[query], query_labels, db[target], db_labels)
        assert precision > prior + 0.25, f"{query}→{target}: top-20 precision {precision:.3f}, prior {prior:.3f}"


def test_seeded_runs_are_reproducible(paired_model: TrainedHasher) -> None:
    data = _train_split()
    labels = data["labels"][:N_TRAIN]
    args = (data["image"][:N_TRAIN], labels, data["text"][:N_TRAIN], labels)
    again = train_amsh(*args, SMALL, seed=0)
    assert again.history == paired_model.history
    quick = dataclasses.replace(SMALL, iterations=1, function_iterations=1)
    other = train_amsh(*args, quick, seed=1)
    for m in ("image", "text"):
        e, f = paired_model.encoders[m], again.encoders[m]
        np.testing.assert_array_equal(f.kernel.anchors, e.kernel.anchors)
        np.testing.assert_array_equal(f.projection, e.projection)
        np.testing.assert_array_equal(f.bias, e.bias)
        assert not np.array_equal(other.encoders[m].kernel.anchors, e.kernel.anchors)


def test_paper_defaults() -> None:
    config = AMSHConfig(bits=64)
    assert (config.eta, config.lam, config.beta) == (1.0, 1e-3, 1e-3)
    assert (config.n_anchors, config.iterations, config.function_iterations) == (1500, 15, 15)


@pytest.mark.parametrize(
    "changes",
    [{"bits": 0}, {"eta": 0.0}, {"lam": -1.0}, {"beta": float("nan")}, {"ridge": 0.0}, {"iterations": 0}],
)
def test_bad_config_is_rejected(changes: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(SMALL, **changes)


def _bad_inputs() -> list[tuple[str, dict, str]]:
    data = make_synthetic_crossmodal(n=200)
    image, text, labels = data["image"], data["text"], data["labels"].astype(np.float64)
    nan_image = image.copy()
    nan_image[3, 2] = np.nan
    extra_class = np.column_stack([labels, np.ones(len(labels))])
    non_binary = labels.copy()
    non_binary[0, 0] = 2
    empty_class = labels.copy()
    empty_class[:, 1] = 0
    return [
        ("nan features", {"image": nan_image}, "NaN"),
        ("1-D features", {"text": text[:, 0]}, "2-D"),
        ("label rows", {"text_labels": labels[:-1]}, "shape"),
        ("non-binary labels", {"image_labels": non_binary}, "0/1"),
        ("empty class", {"text_labels": empty_class}, "empty class"),
        ("class counts differ", {"text_labels": extra_class}, "share their classes"),
        ("bits > anchors", {"config": AMSHConfig(bits=64, n_anchors=32)}, "exceeds anchors"),
        ("anchors > n", {"config": AMSHConfig(bits=16, n_anchors=500)}, "only 200 training samples"),
        ("anchors > n (text)", {"text": text[:100], "text_labels": labels[:100]}, "text has only 100"),
    ]


@pytest.mark.parametrize(("case", "changes", "message"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_bad_input_is_rejected_before_training(
    monkeypatch: pytest.MonkeyPatch, case: str, changes: dict, message: str
) -> None:
    def training_started(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{case}: training started before the input was rejected")

    monkeypatch.setattr(amsh.RBFKernelMap, "fit_transform", training_started)
    monkeypatch.setattr(amsh, "learn_codes", training_started)
    data = make_synthetic_crossmodal(n=200)
    kwargs = {
        "image": data["image"],
        "image_labels": data["labels"],
        "text": data["text"],
        "text_labels": data["labels"],
        "config": AMSHConfig(bits=16, n_anchors=150),
        **changes,
    }
    with pytest.raises(ValueError, match=message):
        train_amsh(**kwargs)
