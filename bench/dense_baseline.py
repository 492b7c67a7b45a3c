"""The dense float baseline: what a user would deploy instead of hashing, as the accuracy anchor.

    python -m bench.dense_baseline --method cca --method dsfh --bits 64

Per method and length: train it on the dataset's features, then rank the database both ways by the cosine
of the real-valued outputs (``encoder.real_codes``, before the sign) and, beside it, by the Hamming
distance of the signed codes. Same split and protocol as ``python -m training train``
(:func:`training.evaluation.metrics.evaluate_scores` / ``evaluate_codes``). Memory per item: 4·d bytes
of float32 vs bits/8 bytes of packed code.

``--real PATH`` evaluates saved real-valued outputs instead (``<method>_real.npz`` from a GPU run, keys
``<bits>_<part>_<modality>``). ``--cache DIR`` takes precomputed features (``image_fp32.npy``,
``text_fp32.npy`` and ``items.json`` with the item ids in row order) instead of the pipeline's featurizers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from index.codes import to_signs
from training.datasets import load_dataset
from training.evaluation.metrics import evaluate_scores
from training.evaluation.report import DIRECTIONS, evaluate_directions
from training.featurize.pipeline import FeatureSet, featurize
from training.methods.base import TrainedHasher
from training.registry import TRAINERS


def load_features(dataset: str, cache: Path | None, seed: int = 0) -> FeatureSet:
    """The dataset's features from the pipeline, or (``cache``) precomputed rows aligned by item id."""
    data = load_dataset(dataset, seed=seed)
    if cache is None:
        return featurize(data)
    row = {item: i for i, item in enumerate(json.loads((cache / "items.json").read_text()))}
    order = np.array([row[item] for item in data.ids])
    return FeatureSet(
        dataset=data.name,
        image=np.load(cache / "image_fp32.npy")[order],
        text=np.load(cache / "text_fp32.npy")[order],
        labels=data.labels,
        split=data.split,
        image_featurizer=None,
        text_featurizer=None,
    )


def real_parts(hasher: TrainedHasher, features: FeatureSet) -> dict[str, np.ndarray]:
    """Real-valued outputs of the query and database parts per modality, keyed like ``encode_parts``."""
    vectors = {}
    for part in ("query", "database"):
        image, text, _ = features.part(part)
        vectors[f"{part}_image"] = hasher.encoders["image"].real_codes(image).astype(np.float32)
        vectors[f"{part}_text"] = hasher.encoders["text"].real_codes(text).astype(np.float32)
    return vectors


def load_real(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """Saved real-valued outputs (keys ``<bits>_<part>_<modality>``, as a GPU run writes them) by length."""
    runs: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            bits, _, name = key.partition("_")
            runs.setdefault(int(bits), {})[name] = data[key]
    return runs


def dense_vs_hash(method: str, vectors: dict[str, np.ndarray], features: FeatureSet) -> list[dict]:
    """One row per ranking (dense cosine of ``vectors``, Hamming of their signs): the protocol's scalars
    both ways and the bytes per item each stores."""
    q_labels, db_labels = features.part("query")[2], features.part("database")[2]
    dense = {
        direction: evaluate_scores(vectors[f"query_{q}"], vectors[f"database_{d}"], q_labels, db_labels)
        for direction, (q, d) in DIRECTIONS.items()
    }
    hashed = evaluate_directions({key: to_signs(v) for key, v in vectors.items()}, q_labels, db_labels)
    dim = vectors["database_image"].shape[1]
    rows = []
    for ranking, metrics, nbytes in (("dense cosine", dense, 4 * dim), ("hash", hashed, dim / 8)):
        row = {"method": method, "dim": dim, "ranking": ranking, "bytes_per_item": nbytes}
        for direction, m in metrics.items():
            for key in ("mAP", "mAP_tie_averaged", "MAP@50", "P@10"):
                if key in m:
                    row[f"{direction}_{key}"] = round(float(m[key]), 4)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", default=[], choices=sorted(TRAINERS))
    parser.add_argument("--bits", type=int, action="append", default=[])
    parser.add_argument("--real", type=Path, action="append", default=[], help="saved outputs <method>_real.npz")
    parser.add_argument("--dataset", default="openclipart")
    parser.add_argument("--cache", type=Path, help="precomputed feature folder instead of the pipeline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    features = load_features(args.dataset, args.cache, args.seed)
    print(json.dumps(features.describe()), flush=True)
    for method in args.method:
        for bits in args.bits:
            hasher = TRAINERS[method](features, bits, args.seed, {})
            for row in dense_vs_hash(method, real_parts(hasher, features), features):
                print(json.dumps(row), flush=True)
    for path in args.real:
        for vectors in load_real(path).values():
            for row in dense_vs_hash(path.name.removesuffix("_real.npz"), vectors, features):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
