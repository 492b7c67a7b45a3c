"""Retrieval quality of the int8 MiniLM graph the bundles carry against its fp32 source, on OpenClipart.

    python -m bench.text_quantization --method dsfh --bits 64

Both graphs come from the same export (``training.featurize.pretrained_export``: ``export_text``, then
``quantize`` for int8); every text and text view is featurized through each, one text per graph run as
the service runs them (cached by graph sha256), and the same method is trained and evaluated on each
feature set, images unchanged. Prints one JSON row per graph. The speed side is
``bench/featurizer_bench.py`` over a folder holding both graphs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from training.datasets import load_dataset
from training.evaluation.report import evaluate_hasher, summary_row
from training.featurize.pipeline import featurize
from training.featurize.pretrained import GRAPHS_DIR, pretrained_text, text_features
from training.featurize.pretrained_export import export_text
from training.registry import TRAINERS

FP32_GRAPH = GRAPHS_DIR / "text.fp32.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="dsfh", choices=sorted(TRAINERS))
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = load_dataset("openclipart", seed=args.seed)
    int8 = featurize(dataset, kind="pretrained")
    if not FP32_GRAPH.is_file():
        export_text(FP32_GRAPH)
    fp32_text = pretrained_text(FP32_GRAPH, int8.text_featurizer.tokenizer)
    fp32 = replace(int8, text=text_features(fp32_text, list(dataset.texts)), text_featurizer=fp32_text)
    for name, features in (("int8", int8), ("fp32", fp32)):
        hasher = TRAINERS[args.method](features, args.bits, args.seed, {})
        row = summary_row(args.method, args.bits, evaluate_hasher(hasher, features))
        megabytes = round(features.text_featurizer.graph.stat().st_size / 1e6, 1)
        print(json.dumps({"text_graph": name, "MB": megabytes} | row), flush=True)


if __name__ == "__main__":
    main()
