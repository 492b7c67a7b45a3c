"""Every trainable method by name, each adapted to one signature: (features, bits, seed, params) → hasher.

``params`` overrides fields of the method's config dataclass (e.g. ``{"n_anchors": 500}``) through
``build_config``, the one place that turns them into a config: a key that is not a field, or that the
code length sets, is refused with the valid keys named; methods without hyper-parameters accept none.
Trainer modules are imported on use, so choosing one method does not pay for the others' imports (and
naming the methods, as the CLI does, pays for none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from training.methods.base import TrainedHasher

if TYPE_CHECKING:
    from training.featurize.pipeline import FeatureSet

Trainer = Callable[["FeatureSet", int, int, dict], TrainedHasher]
UDDH_CENTERS = 64  # UDDH's k (semantic-index buckets) ...
ITEMS_PER_CENTER = 4  # ... or fewer on a small collection, so that each center has items to fit to


def build_config(
    method: str, config_class: type | None, params: Mapping[str, Any], fixed: Mapping[str, Any], **defaults: Any
) -> Any:
    """``config_class(**fixed, **defaults, **params)``. ``fixed`` holds the fields the code length sets (not
    overridable), ``defaults`` the registry's own defaults (overridable); a ``params`` key that is not
    another field of the config is a ValueError naming the valid keys. ``config_class`` None: no
    hyper-parameters, only an empty ``params`` is valid (and None is returned)."""
    fields = {f.name for f in dataclasses.fields(config_class)} if config_class is not None else set()
    valid = sorted(fields - set(fixed))
    unknown = sorted(set(params) - set(valid))
    if unknown:
        named = [f"{key} (set by --bits)" if key in fixed else f"{key} (unknown)" for key in unknown]
        raise ValueError(f"{method} does not take {', '.join(named)}; valid parameters: {', '.join(valid) or 'none'}")
    if config_class is None:
        return None
    return config_class(**fixed, **(dict(defaults) | dict(params)))


def _labelled_train(method: str, features: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training part of a supervised method; a dataset without labels is refused up front."""
    image, text, labels = features.part("train")
    if labels is None or labels.ndim != 2 or labels.shape[1] == 0 or not labels.any():
        raise ValueError(
            f"{method} is supervised but dataset {features.dataset!r} has no labels; "
            "train the unsupervised UDDH instead (--method uddh)"
        )
    return image, text, labels


def _validation_map(features: FeatureSet) -> Callable[[TrainedHasher], dict[str, float]]:
    """Per-epoch monitoring of the deep trainers: mAP of the query set against the database, both ways.
    Monitoring only: no model or epoch is selected on it."""
    from index.codes import to_signs
    from training.evaluation.metrics import evaluate_codes

    query_image, query_text, query_labels = features.part("query")
    database_image, database_text, database_labels = features.part("database")

    def evaluate(hasher: TrainedHasher) -> dict[str, float]:
        def codes(modality: str, x: np.ndarray) -> np.ndarray:
            return to_signs(hasher.encoders[modality].real_codes(x))

        i2t = evaluate_codes(codes("image", query_image), codes("text", database_text), query_labels, database_labels)
        t2i = evaluate_codes(codes("text", query_text), codes("image", database_image), query_labels, database_labels)
        return {"val_map_i2t": i2t["mAP"], "val_map_t2i": t2i["mAP"]}

    return evaluate


def _lsh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.baselines import train_lsh

    build_config("lsh", None, params, {})
    image, text, _ = features.part("train")
    return train_lsh(image, text, bits, seed)


def _cca(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.baselines import train_cca

    build_config("cca", None, params, {})
    image, text, _ = features.part("train")
    return train_cca(image, text, bits, seed)


def _cmfh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.cmfh import CMFHConfig, train_cmfh

    image, text, _ = features.part("train")
    return train_cmfh(image, text, build_config("cmfh", CMFHConfig, params, {"bits": bits}), seed=seed)


def _dsfh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.dsfh import DSFHConfig, train_dsfh

    image, text, labels = _labelled_train("dsfh", features)
    small = {"n_anchors": min(DSFHConfig.n_anchors, len(image)), "n_clusters": min(DSFHConfig.n_clusters, len(image))}
    config = build_config("dsfh", DSFHConfig, params, {"bits": bits}, **small)  # a small collection: fewer anchors
    views = features.views("train") if config.fit_text_views else None
    return train_dsfh(image, text, labels, config, seed=seed, text_views=views, progress=True)


def _amsh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.amsh import AMSHConfig, train_amsh

    image, text, labels = _labelled_train("amsh", features)
    return train_amsh(image, labels, text, labels, build_config("amsh", AMSHConfig, params, {"bits": bits}), seed=seed)


def _amsh_unpaired(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    """AMSH's unpaired protocol (§IV-E): each modality's training set shuffled on its own, so no row
    of one modality corresponds to the same row of the other; only labels tie them."""
    from training.methods.amsh import AMSHConfig, train_amsh

    config = build_config("amsh-unpaired", AMSHConfig, params, {"bits": bits})
    image, text, labels = _labelled_train("amsh-unpaired", features)
    rng = np.random.default_rng(seed + 1)
    image_order, text_order = rng.permutation(len(image)), rng.permutation(len(text))
    hasher = train_amsh(
        image[image_order],
        labels[image_order],
        text[text_order],
        labels[text_order],
        config,
        seed,
    )
    hasher.method = "amsh-unpaired"
    return hasher


def _uddh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    """UDDH with ``bits`` = l^c + l^s: by default half of the code (rounded down to bytes) is the shared
    head, k = 64 centers (at most one per 4 training items). The tqdm bar shows each outer iteration's
    loss and, when the dataset has labels, image→text MAP@50 of the query set against the database
    (monitoring only: nothing is selected on it)."""
    from index.codes import to_signs
    from training.evaluation.metrics import evaluate_codes
    from training.methods.deep import Monitor
    from training.methods.uddh import UDDHConfig, train_uddh

    shared = params.get("shared_bits", max(8, bits // 16 * 8))
    image, text, _ = features.part("train")
    centers = min(UDDH_CENTERS, max(1, len(image) // ITEMS_PER_CENTER))
    config = build_config(
        "uddh", UDDHConfig, params, {"specific_bits": bits - shared}, shared_bits=shared, n_clusters=centers
    )
    query_image, _, query_labels = features.part("query")
    _, database_text, database_labels = features.part("database")

    def map_at_50(hasher: TrainedHasher) -> float:
        queries = to_signs(hasher.encoders["image"].real_codes(query_image))
        database = to_signs(hasher.encoders["text"].real_codes(database_text))
        return evaluate_codes(queries, database, query_labels, database_labels)["MAP@50"]

    monitor = Monitor(progress=True, eval_fn=map_at_50 if query_labels.any() else None)  # unlabelled: loss only
    return train_uddh(image, text, config, seed=seed, monitor=monitor).hasher


def _dmsfh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.deep import Monitor
    from training.methods.dmsfh import DMSFHConfig, train_dmsfh

    image, text, labels = _labelled_train("dmsfh", features)
    config = build_config("dmsfh", DMSFHConfig, params, {"bits": bits})
    views = features.views("train") if config.views_per_item else None
    monitor = Monitor(progress=True, eval_fn=_validation_map(features))
    return train_dmsfh(image, text, labels, config, seed=seed, monitor=monitor, text_views=views)


def _mmach(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.deep import Monitor
    from training.methods.mmach import MMACHConfig, train_mmach

    image, text, labels = _labelled_train("mmach", features)
    config = build_config("mmach", MMACHConfig, params, {"bits": bits})
    return train_mmach(
        image, text, labels, config, seed=seed, monitor=Monitor(progress=True, eval_fn=_validation_map(features))
    )


def _contrastive(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    """Contrastive instance hashing; items whose text features are identical (identical texts, which
    OpenClipart repeats) are each other's positives, not negatives."""
    from training.methods.contrastive import ContrastiveConfig, Pairs, train_contrastive
    from training.methods.deep import Monitor

    image, text, labels = _labelled_train("contrastive", features)
    config = build_config("contrastive", ContrastiveConfig, params, {"bits": bits})
    _, groups = np.unique(text, axis=0, return_inverse=True)
    views = features.views("train") if config.view_weight else None
    monitor = Monitor(progress=True)
    return train_contrastive(Pairs(image, text, labels, groups.ravel(), views), config, seed, monitor)


def _dsfh_instance(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    """DSFH's code as the head, a contrastive instance code as the tail (identical texts are positives)."""
    from training.methods.contrastive import Pairs
    from training.methods.deep import Monitor
    from training.methods.dsfh import DSFHConfig
    from training.methods.dsfh_instance import DSFHInstanceConfig, train_dsfh_instance

    image, text, labels = _labelled_train("dsfh-instance", features)
    small = {"n_anchors": min(DSFHConfig.n_anchors, len(image)), "n_clusters": min(DSFHConfig.n_clusters, len(image))}
    config = build_config("dsfh-instance", DSFHInstanceConfig, params, {"bits": bits}, dsfh=small)
    _, groups = np.unique(text, axis=0, return_inverse=True)
    views = features.views("train")
    monitor = Monitor(progress=True)
    return train_dsfh_instance(Pairs(image, text, labels, groups.ravel(), views), config, seed, monitor)


TRAINERS: dict[str, Trainer] = {
    "lsh": _lsh,
    "cca": _cca,
    "cmfh": _cmfh,
    "dsfh": _dsfh,
    "amsh": _amsh,
    "amsh-unpaired": _amsh_unpaired,
    "uddh": _uddh,
    "dmsfh": _dmsfh,
    "mmach": _mmach,
    "contrastive": _contrastive,
    "dsfh-instance": _dsfh_instance,
}
