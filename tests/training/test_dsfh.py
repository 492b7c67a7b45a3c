"""DSFH trainer: each alternating step, the constraints, the factored similarity and the trained codes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from index.codes import hamming_distances, to_signs
from tests.support.synthetic import make_synthetic_crossmodal, short_texts
from training.methods import dsfh
from training.methods.base import TextViews
from training.methods.dsfh import (
    DSFHConfig,
    FusedSemantics,
    fit_hash_projection,
    fuse_semantics,
    semantic_loss,
    solve_orthogonal_balanced,
    specificity_loss,
    specificity_surrogate,
    train_dsfh,
    update_B,
    update_H,
    update_W,
)
from training.methods.kernel import KernelHashFunction

N, H_DIM, BITS, ALPHA, GAMMA = 80, 30, 8, 1e-2, 0.7  # γ ≠ 1 so the weight is exercised
SMALL = DSFHConfig(bits=16, n_anchors=100, n_clusters=10)


@pytest.fixture
def problem() -> dict:
    """A small random instance of every quantity one alternating step sees."""
    rng = np.random.default_rng(3)
    labels = (rng.random((N, 5)) < 0.3).astype(float)
    labels[np.arange(N), rng.integers(0, 5, N)] = 1
    semantics = fuse_semantics(labels, n_clusters=6, gamma=GAMMA, seed=0, n_init=1)
    x = rng.random((N, H_DIM))
    return {
        "rng": rng,
        "labels": labels,
        "semantics": semantics,
        "s_sq": semantics.sq_norm(),
        "x": x,
        "x_sq": float((x * x).sum()),
        "h": solve_orthogonal_balanced(rng.standard_normal((N, BITS)), rng),
        "b": rng.choice([-1.0, 1.0], size=(N, BITS)),
    }


def dense_similarity(semantics: FusedSemantics) -> np.ndarray:
    clusters = semantics.clusters.toarray()
    return semantics.labels @ semantics.labels.T + semantics.gamma * clusters @ clusters.T


def random_orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((rows, cols)))[0]


def nearby_orthonormal(w: np.ndarray, rng: np.random.Generator, eps: float) -> np.ndarray:
    """A feasible W close to ``w``: the polar factor of a small perturbation."""
    u, _, vt = np.linalg.svd(w + eps * rng.standard_normal(w.shape), full_matrices=False)
    return u @ vt


def assert_feasible_h(h: np.ndarray) -> None:
    n, r = h.shape
    np.testing.assert_allclose(h.T @ h, n * np.eye(r), atol=1e-8 * n)  # H Hᵀ = nI (paper layout)
    np.testing.assert_allclose(h.sum(axis=0), 0, atol=1e-8 * n)  # H 1 = 0: every bit balanced


def precision_at(query: np.ndarray, db: np.ndarray, relevant: np.ndarray, top: int) -> float:
    ranking = np.argsort(hamming_distances(query, db), axis=1, kind="stable")[:, :top]
    return float(np.take_along_axis(relevant, ranking, axis=1).mean())


# -- fused semantics (Eq. 2, 3, 11) -------------------------------------------------------------------------


def test_factored_similarity_equals_the_dense_n_by_n_matrix(problem: dict) -> None:
    semantics, m = problem["semantics"], problem["rng"].standard_normal((N, BITS))
    dense = dense_similarity(semantics)
    np.testing.assert_allclose(semantics.product(m), dense @ m, atol=1e-10)
    assert semantics.sq_norm() == pytest.approx(float((dense**2).sum()), rel=1e-12)
    # S_I is the cosine similarity of label vectors, S_C (weight γ) the same-cluster indicator.
    np.testing.assert_allclose(np.diag(semantics.labels @ semantics.labels.T), 1.0)
    assign = semantics.clusters.toarray().argmax(1)
    same_cluster = assign[:, None] == assign[None, :]
    np.testing.assert_allclose(dense - semantics.labels @ semantics.labels.T, GAMMA * same_cluster, atol=1e-12)


def test_label_clusters_keep_identical_label_vectors_together(problem: dict) -> None:
    labels = problem["labels"]
    distinct, inverse = np.unique(labels, axis=0, return_inverse=True)
    assign = fuse_semantics(labels, n_clusters=4, gamma=1.0, seed=0, n_init=1).clusters.toarray().argmax(1)
    assert len(np.unique(assign)) == 4
    for group in range(len(distinct)):
        assert len(np.unique(assign[inverse.reshape(-1) == group])) == 1
    # With at least as many clusters as distinct label vectors, each distinct vector is its own cluster.
    every = fuse_semantics(labels, n_clusters=len(distinct), gamma=1.0, seed=0, n_init=1)
    np.testing.assert_array_equal(every.clusters.toarray().argmax(1), inverse.reshape(-1))


# -- alternating steps: none increases the objective it solves ----------------------------------------------


def test_w_step_solves_its_procrustes_problem(problem: dict) -> None:
    """The W-step maximises Eq. 6, i.e. minimises Eq. 5 with ‖WX‖² read as ‖X‖², over W Wᵀ = I."""
    x, h, rng, x_sq = problem["x"], problem["h"], problem["rng"], problem["x_sq"]
    w = update_W(x, h)
    np.testing.assert_allclose(w.T @ w, np.eye(BITS), atol=1e-10)  # W Wᵀ = I (paper layout)
    new = specificity_surrogate(h, x @ w, x_sq)
    for _ in range(20):
        assert new <= specificity_surrogate(h, x @ random_orthonormal(rng, H_DIM, BITS), x_sq)
        assert new <= specificity_surrogate(h, x @ nearby_orthonormal(w, rng, 1e-3), x_sq) + 1e-9 * new


def eq9_objective(h: np.ndarray, xw: np.ndarray, b: np.ndarray, semantics: FusedSemantics) -> float:
    """Eq. 9 for one modality, evaluated on the dense n × n similarity."""
    fit = ((h - xw) ** 2).sum()
    return float(fit + ALPHA * ((b @ h.T - b.shape[1] * dense_similarity(semantics)) ** 2).sum())


def test_h_step_minimises_eq9_under_its_constraints(problem: dict) -> None:
    x, b, semantics, rng = problem["x"], problem["b"], problem["semantics"], problem["rng"]
    xw, sb = x @ update_W(x, problem["h"]), semantics.product(b)
    h = update_H(xw, sb, ALPHA, rng)
    assert_feasible_h(h)
    new = eq9_objective(h, xw, b, semantics)
    assert new <= eq9_objective(problem["h"], xw, b, semantics)
    for _ in range(20):  # no feasible point, far or near, does better
        far = solve_orthogonal_balanced(rng.standard_normal((N, BITS)), rng)
        near = solve_orthogonal_balanced(h + 1e-3 * rng.standard_normal((N, BITS)), rng)
        assert new <= eq9_objective(far, xw, b, semantics)
        assert new <= eq9_objective(near, xw, b, semantics) + 1e-9 * new


def test_orthogonal_balanced_solution_reaches_the_nuclear_norm_bound() -> None:
    """max ⟨H, G⟩ over Hᵀ1 = 0, HᵀH = nI is √n·‖G − mean‖_* (von Neumann), also when G is rank-deficient."""
    rng = np.random.default_rng(5)
    full = rng.standard_normal((N, BITS)) + 3.0
    deficient = full[:, :3] @ rng.standard_normal((3, BITS))  # rank 3 < 8 bits, after centring too
    for g in (full, deficient, np.ones((N, BITS))):
        h = solve_orthogonal_balanced(g, rng)
        assert_feasible_h(h)
        bound = np.sqrt(N) * np.linalg.svd(g - g.mean(0), compute_uv=False).sum()
        assert float((h * g).sum()) == pytest.approx(bound, rel=1e-9, abs=1e-9)


def test_b_step_minimises_the_semantic_term_over_binary_codes(problem: dict) -> None:
    semantics, rng, s_sq = problem["semantics"], problem["rng"], problem["s_sq"]
    hs = [problem["h"], solve_orthogonal_balanced(rng.standard_normal((N, BITS)), rng)]

    def total(b: np.ndarray) -> float:
        return sum(semantic_loss(b, h, semantics.product(b), s_sq) for h in hs)

    b = update_B(semantics, hs)
    assert set(np.unique(b)) <= {-1.0, 1.0}
    assert total(b) <= total(problem["b"])
    for _ in range(20):
        assert total(b) <= total(rng.choice([-1.0, 1.0], size=(N, BITS)))
        flipped = b.copy()
        flipped[rng.integers(N), rng.integers(BITS)] *= -1
        assert total(b) <= total(flipped) + 1e-9 * total(b)


def test_objective_terms_match_their_dense_definitions(problem: dict) -> None:
    x, h, b, semantics = problem["x"], problem["h"], problem["b"], problem["semantics"]
    dense = ((b @ h.T - BITS * dense_similarity(semantics)) ** 2).sum()
    assert semantic_loss(b, h, semantics.product(b), problem["s_sq"]) == pytest.approx(dense, rel=1e-10)
    w = update_W(x, h)
    assert specificity_loss(h, x @ w) == pytest.approx(float(((h - x @ w) ** 2).sum()))


def test_hash_projection_is_the_ridge_solution_of_eq18(problem: dict) -> None:
    x, b, lam = problem["x"], problem["b"], 0.5
    p = fit_hash_projection(x, b, lam)
    np.testing.assert_allclose(x.T @ (x @ p - b) + lam * p, 0, atol=1e-8)  # zero gradient


# -- training ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")  # e.g. no K-means "fewer distinct points than clusters"
def test_history_objective_never_increases(synthetic: dict) -> None:
    config = DSFHConfig(bits=16, n_anchors=100, iterations=8)  # default k = 400 > distinct label vectors
    hasher = train_dsfh(synthetic["image"], synthetic["text"], synthetic["labels"], config, seed=1)
    objectives = [record["objective"] for record in hasher.history]
    assert [record["iteration"] for record in hasher.history] == list(range(1, 9))
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in itertools.pairwise(objectives))
    assert objectives[-1] < objectives[0]


def test_trained_codes_retrieve_across_modalities_far_above_chance() -> None:
    data = make_synthetic_crossmodal(n=600, seed=2)
    train, query = slice(0, 400), slice(400, 600)
    hasher = train_dsfh(data["image"][train], data["text"][train], data["labels"][train], SMALL, seed=0)
    labels = data["labels"].astype(int)
    relevant = (labels[query] @ labels[train].T) > 0
    prior = float(relevant.mean())

    def codes(modality: str, rows: slice) -> np.ndarray:
        return to_signs(hasher.encoders[modality].real_codes(data[modality][rows]))

    img2txt = precision_at(codes("image", query), codes("text", train), relevant, top=20)
    txt2img = precision_at(codes("text", query), codes("image", train), relevant, top=20)
    assert img2txt > prior + 0.25, (img2txt, prior)
    assert txt2img > prior + 0.25, (txt2img, prior)


def test_text_views_teach_the_text_hash_function_short_queries_and_leave_the_codes_alone() -> None:
    data = make_synthetic_crossmodal(n=600, seed=2)
    train = np.arange(400)
    view_features, _ = short_texts(data, np.repeat(train, 2), seed=3)
    views = TextViews(view_features, np.repeat(train, 2))
    queries, tags = short_texts(data, np.arange(400, 600), seed=3)
    relevant = data["labels"][train][:, tags].T.astype(bool)
    args = (data["image"][train], data["text"][train], data["labels"][train], SMALL)
    runs = {"without": train_dsfh(*args, seed=0), "with": train_dsfh(*args, seed=0, text_views=views)}
    off = train_dsfh(*args[:3], dataclasses.replace(SMALL, fit_text_views=False), seed=0, text_views=views)
    np.testing.assert_array_equal(off.encoders["text"].projection, runs["without"].encoders["text"].projection)
    np.testing.assert_array_equal(  # B and the image function are trained without the views
        runs["with"].encoders["image"].projection, runs["without"].encoders["image"].projection
    )
    precision = {}
    for name, hasher in runs.items():
        images = to_signs(hasher.encoders["image"].real_codes(data["image"][train]))
        precision[name] = precision_at(to_signs(hasher.encoders["text"].real_codes(queries)), images, relevant, 10)
    assert precision["with"] > precision["without"] + 0.1, precision


def test_result_carries_kernel_encoders_config_and_seed(synthetic: dict) -> None:
    hasher = train_dsfh(synthetic["image"], synthetic["text"], synthetic["labels"], SMALL, seed=4)
    assert (hasher.method, hasher.bits) == ("dsfh", 16)
    assert hasher.config["seed"] == 4 and hasher.config["n_anchors"] == 100
    for modality, features in (("image", synthetic["image"]), ("text", synthetic["text"])):
        encoder = hasher.encoders[modality]
        assert isinstance(encoder, KernelHashFunction)
        assert encoder.projection.shape == (100, 16) and not encoder.bias.any()
        assert encoder.input_dim == features.shape[1]
        assert encoder.real_codes(features[:5]).shape == (5, 16)


def test_seeded_runs_are_reproducible(synthetic: dict) -> None:
    args = (synthetic["image"], synthetic["text"], synthetic["labels"], SMALL)
    first, again, other = train_dsfh(*args, seed=7), train_dsfh(*args, seed=7), train_dsfh(*args, seed=8)
    assert first.history == again.history
    for modality in ("image", "text"):
        np.testing.assert_array_equal(first.encoders[modality].projection, again.encoders[modality].projection)
    assert not np.array_equal(first.encoders["image"].projection, other.encoders["image"].projection)


# -- bad input is refused before any training work ----------------------------------------------------------


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[3, 2] = np.nan
    return x


def _with_empty_class(y: np.ndarray) -> np.ndarray:
    y = y.copy()
    y[:, 1] = 0
    return y


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {**d, "image": d["image"][:, 0]}, "2-D"),
        (lambda d: {**d, "image": d["image"][:0]}, "non-empty"),
        (lambda d: {**d, "text": _with_nan(d["text"])}, "NaN"),
        (lambda d: {**d, "text": d["text"][:-1]}, "paired"),
        (lambda d: {**d, "labels": d["labels"][:-1]}, "labels must have shape"),
        (lambda d: {**d, "labels": _with_empty_class(d["labels"])}, "empty class"),
        (lambda d: {**d, "labels": d["labels"] * 2}, "0/1"),
        (lambda d: {key: value[:90] for key, value in d.items()}, "anchors requested"),
    ],
)
def test_bad_input_raises_before_training(synthetic: dict, monkeypatch, change, message: str) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("training started on invalid input")

    monkeypatch.setattr(dsfh.RBFKernelMap, "fit_transform", no_training)
    data = change(synthetic)
    with pytest.raises(ValueError, match=message):
        train_dsfh(data["image"], data["text"], data["labels"], SMALL)


@pytest.mark.parametrize(
    ("config", "rows", "message"),
    [
        (DSFHConfig(bits=16, n_anchors=100, n_clusters=601), 600, "label clusters requested"),
        (DSFHConfig(bits=20, n_anchors=20, n_clusters=5), 20, "need more than 20 training items"),
    ],
)
def test_config_too_large_for_the_data_raises_before_training(
    synthetic: dict, monkeypatch, config: DSFHConfig, rows: int, message: str
) -> None:
    monkeypatch.setattr(dsfh.RBFKernelMap, "fit_transform", lambda *args, **kwargs: pytest.fail("training started"))
    with pytest.raises(ValueError, match=message):
        train_dsfh(synthetic["image"][:rows], synthetic["text"][:rows], synthetic["labels"][:rows], config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 128, "n_anchors": 100}, "bits exceed 100 anchors"),
        ({"bits": 0}, "positive"),
        ({"bits": 8, "iterations": 0}, "positive"),
        ({"bits": 8, "lam": 0.0}, "lam > 0"),
        ({"bits": 8, "alpha": -1.0}, "alpha"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DSFHConfig(**kwargs)
