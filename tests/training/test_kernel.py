"""RBF anchor features shared by DSFH and AMSH."""

from __future__ import annotations

import numpy as np
import pytest

from training.methods.kernel import RBFKernelMap


def test_training_features_equal_the_out_of_sample_transform() -> None:
    x = np.random.default_rng(0).normal(size=(300, 7))
    kernel, phi = RBFKernelMap.fit_transform(x, 40, np.random.default_rng(1))
    assert np.array_equal(phi, kernel.transform(x))


def test_sigma_is_the_mean_sample_anchor_distance_and_anchors_are_training_rows() -> None:
    x = np.random.default_rng(2).normal(size=(100, 3))
    kernel, phi = RBFKernelMap.fit_transform(x, 10, np.random.default_rng(3))
    distances = np.linalg.norm(x[:, None] - kernel.anchors[None], axis=2)
    assert kernel.sigma == pytest.approx(distances.mean())
    assert all((x == a).all(1).any() for a in kernel.anchors)
    assert np.allclose(phi, np.exp(-(distances**2) / (2 * kernel.sigma**2)))


def test_more_anchors_than_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="5 anchors requested but only 3"):
        RBFKernelMap.fit_transform(np.eye(3), 5, np.random.default_rng(0))
