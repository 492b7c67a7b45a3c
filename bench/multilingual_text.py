"""What a collection whose texts are not English gets from the English text encoder (all-MiniLM-L6-v2,
the bundles' text featurizer), measured on parallel captions.

    python -m bench.multilingual_text [--bundle models/default]

``docs/data/multilingual_captions.jsonl``: 36 captions, six for each of six categories of
``examples/clipart``, each written in English, German, French and Chinese. Per language, one JSON row:

* ``unk_share``: the share of ``[UNK]`` among the tokens the bundle's tokenizer makes of the captions
  (``[CLS]``/``[SEP]`` not counted), and ``tokens_per_caption``;
* ``translation_top1``: how often a caption's nearest English caption (cosine of the 384-d sentence
  features) is its own English original (chance: 1 in 36);
* ``t2i_mAP`` and ``t2i_P@5``: each caption as a query through the bundle's hash codes against the 60
  images of ``examples/clipart``, an image relevant when its top-level label is the caption's category;
  ``label_prior`` is the precision of a random ranking, the floor to read them against.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from index.bundle import load_bundle
from index.collection import read_collection
from training.evaluation.metrics import evaluate_codes, relevance

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT / "docs" / "data" / "multilingual_captions.jsonl"
EXAMPLE = ROOT / "examples" / "clipart"
LANGUAGES = ("en", "de", "fr", "zh")


def _one_hot(categories: list[str], names: list[str]) -> np.ndarray:
    return np.array([[category == name for name in names] for category in categories], dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    tokenizer = bundle.text_featurizer.tokenizer
    unk = tokenizer.token_to_id("[UNK]")
    captions = [json.loads(line) for line in CAPTIONS.read_text(encoding="utf-8").splitlines()]
    names = sorted({row["category"] for row in captions})
    query_labels = _one_hot([row["category"] for row in captions], names)

    collection = read_collection(EXAMPLE)
    pixels = np.stack([bundle.decode_image(collection.image_file(item)) for item in collection.items])
    images = bundle.signs("image", bundle.image_features(pixels))
    image_labels = _one_hot([item.labels[0].split("/")[0] for item in collection.items], names)

    prior = round(float(relevance(query_labels, image_labels).mean()), 3)
    english = bundle.text_features([row["en"] for row in captions])
    for language in LANGUAGES:
        texts = [row[language] for row in captions]
        tokens = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
        features = bundle.text_features(texts)
        own = (features @ english.T).argmax(axis=1) == np.arange(len(texts))
        metrics = evaluate_codes(bundle.signs("text", features), images, query_labels, image_labels, precision_at=(5,))
        row = {
            "language": language,
            "captions": len(texts),
            "unk_share": round(sum(ids.count(unk) for ids in tokens) / sum(map(len, tokens)), 3),
            "tokens_per_caption": round(float(np.mean([len(ids) for ids in tokens])), 1),
            "translation_top1": round(float(own.mean()), 3),
            "t2i_mAP": round(metrics["mAP"], 3),
            "t2i_P@5": round(metrics["P@5"], 3),
            "label_prior": prior,
        }
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
