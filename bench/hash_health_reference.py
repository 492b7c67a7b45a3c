"""What a healthy model's hash health reads: the default bundle's codes of OpenClipart's database.

    python -m bench.hash_health_reference

Both modalities of the database part (the items a deployment of the demo holds), each routed to its
nearest center of the bundle as the index routes it, measured by ``index.hash_health.measure``: the
values ``/metrics`` shows for that index. Then the tie groups of the held-out (query) texts searched
against those images as the service searches (the default probe of 8 buckets, the re-ranker's scan of 4 ×
its candidates): their mean, and the share of queries whose best distance is shared. Featurizing the
corpus takes minutes on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np

from index.bundle import load_bundle
from index.centers import CenterIndex
from index.hash_health import measure, tie_group_sizes
from index.scan import BucketScan
from service.settings import DEFAULT_BUNDLE, Settings
from training.datasets import load_dataset
from training.featurize.pipeline import bundle_features_kind, featurize


def main() -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)
    features = featurize(load_dataset(bundle.manifest.training.dataset), kind=bundle_features_kind(bundle.manifest))
    images, texts, _ = features.part("database")
    centers = CenterIndex(bundle.code_space.centers)
    for modality, x in (("image", images), ("text", texts)):
        codes = bundle.packed_codes(modality, x)
        buckets = centers.route(codes, 1)[:, 0]
        health = measure(codes, np.bincount(buckets, minlength=len(centers)), bundle.bits)
        print(json.dumps({
            "modality": modality, "items": health.items, "bit_balance_worst": round(health.worst_balance, 3),
            "bit_balance_median": round(float(np.median(np.abs(health.ones - 0.5))), 3),
            "buckets_nonempty": health.buckets_used, "buckets": len(centers),
            "bucket_max_over_mean": round(health.bucket_skew, 2), "distinct_codes_ratio": round(health.distinct, 3),
        }))  # fmt: skip
        if modality == "image":
            scan = BucketScan(bundle.bits, len(centers))
            scan.add(np.arange(len(codes)), codes, buckets)
    queries = bundle.packed_codes("text", features.part("query")[1])
    probes = centers.route(queries, Settings.model_fields["default_probe"].default)
    sizes = tie_group_sizes(scan.search(queries, probes, 4 * bundle.code_space.rerank_candidates)[0])
    print(json.dumps({"queries": len(queries), "tie_group_mean": round(float(sizes.mean()), 2),
                      "tie_group_above_1": round(float((sizes > 1).mean()), 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
