"""One trainer configuration on OpenClipart, scored at the instance level without writing a bundle.

    python -m bench.instance_sweep --method contrastive --bits 64 --param hidden=0 --param epochs=40

Trains ``--method`` on the pretrained features (cached), then prints, for the held-out items against all
items, R@10 and the median rank of the item's own pair three ways (Hamming order; the asymmetric score over
the whole database, the re-ranker's ceiling; cosine of the real codes, a dense model's), beside category
P@10: what docs/methods/dsfh_instance.md's exploration table reports.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from training.cli import parse_params
from training.datasets import load_dataset
from training.evaluation.instance import instance_recall, pair_targets
from training.evaluation.metrics import relevance
from training.featurize.pipeline import featurize
from training.registry import TRAINERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="contrastive", choices=sorted(TRAINERS))
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE, as train's --param")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = load_dataset("openclipart", seed=args.seed)
    features = featurize(dataset)
    hasher = TRAINERS[args.method](features, args.bits, args.seed, parse_params(args.param))
    real = {m: hasher.encoders[m].real_codes(getattr(features, m)).astype(np.float32) for m in ("image", "text")}
    query, everything = dataset.split.query, np.arange(len(dataset.labels))
    rows = {}
    for direction, (source, target) in {"t2i": ("text", "image"), "i2t": ("image", "text")}.items():
        database = np.where(real[target] > 0, 1.0, -1.0).astype(np.float32)
        unit = real[target] / np.linalg.norm(real[target], axis=1, keepdims=True)
        q = real[source][query]
        rankings = {
            "hamming": lambda rows, q=q, db=database: np.where(q[rows] > 0, 1.0, -1.0) @ db.T,
            "asymmetric": lambda rows, q=q, db=database: q[rows] @ db.T,
            "dense cosine": lambda rows, q=q, u=unit: (q[rows] / np.linalg.norm(q[rows], axis=1, keepdims=True)) @ u.T,
        }
        for name, score in rankings.items():
            table = instance_recall(score, len(query), pair_targets(query, everything))
            rows[f"{direction} {name}"] = {"R@10": round(table["R@10"], 4), "median_rank": table["median_rank"]}
        order = np.argsort(-rankings["hamming"](np.arange(len(query))), axis=1, kind="stable")[:, :10]
        relevant = relevance(dataset.labels[query], dataset.labels)
        rows[f"{direction} category P@10"] = round(float(np.take_along_axis(relevant, order, 1).mean()), 4)
    print(json.dumps({"method": args.method, "bits": args.bits, "params": args.param} | rows, indent=1))


if __name__ == "__main__":
    main()
