"""How a bundle answers short queries: people's own natural queries, and the held-out items' short texts.

The protocol's text queries are whole item texts (title, description, tags); a person types one to four
words. This module measures the gap (docs/results_pretrained.md, "Why natural queries fail"): per natural
query, the precision of the top 10 images by Hamming ranking over the whole database (the service
ranks inside the nearest buckets, ``tests/service/test_pretrained_serving.py`` measures that through
HTTP) and, beside it, what the text encoder alone finds (the 10 database texts of highest cosine
similarity to the query's features); and the protocol's text→image metrics with each held-out item's
text views (its title alone, one tag alone) as the queries, beside its full text.
"""

from __future__ import annotations

import re

import numpy as np

from index.bundle import Bundle
from index.codes import hamming_distances, to_signs
from training.evaluation.metrics import evaluate_codes, evaluate_scores
from training.featurize.pipeline import FeatureSet

TOP = 10

# What a person would type, with the category they expect back. Written before any result was seen;
# label names are those of training/datasets/openclipart.py (a hit is relevant if it carries the label).
NATURAL_QUERIES = {
    "zebra": "animals",
    "cute puppy": "animals",
    "cat": "animals",
    "elephant": "animals",
    "horse": "animals",
    "lion": "animals",
    "monkey": "animals",
    "cow": "animals",
    "parrot": "animals/birds",
    "owl": "animals/birds",
    "eagle": "animals/birds",
    "duck": "animals/birds",
    "goldfish": "animals/fish",
    "shark": "animals/fish",
    "butterfly": "animals/bugs",
    "spider": "animals/bugs",
    "ladybug": "animals/bugs",
    "birthday cake": "food",
    "pizza": "food",
    "cheese": "food",
    "hamburger": "food",
    "ice cream cone": "food/desserts",
    "red apple": "food/fruit",
    "banana": "food/fruit",
    "strawberry": "food/fruit",
    "cup of coffee": "food/beverages",
    "beer bottle": "food/beverages",
    "loaf of bread": "food/breads_and_carbs",
    "christmas tree": "recreation/holiday",
    "halloween pumpkin": "recreation/holiday",
    "easter egg": "recreation/holiday",
    "party balloons": "recreation/party",
    "palm tree": "plants/trees",
    "oak tree": "plants/trees",
    "red rose": "plants/flowers",
    "sunflower": "plants/flowers",
    "tulip": "plants/flowers",
    "police car": "transportation/vehicles",
    "school bus": "transportation/vehicles",
    "fire truck": "transportation/vehicles",
    "motorcycle": "transportation/vehicles",
    "sailboat": "transportation/boating",
    "airplane": "transportation",
    "bicycle": "transportation",
    "stop sign": "transportation/roadsigns",
    "house": "buildings",
    "church": "buildings",
    "castle": "buildings",
    "computer mouse": "computer/hardware",
    "printer": "computer/hardware",
    "television": "electronics",
    "mobile phone": "electronics",
    "smiley face": "people/smilies",
    "angry face": "people/smilies",
    "stick figure": "people/stickmen",
    "old man": "people",
    "woman": "people",
    "baby": "people",
    "hat": "people/clothing",
    "shoes": "people/clothing",
    "soccer ball": "recreation/sports",
    "basketball": "recreation/sports",
    "guitar": "recreation/music",
    "piano": "recreation/music",
    "chess": "recreation/games",
    "teddy bear": "recreation/toys",
    "alarm clock": "signs_and_symbols/clocks",
    "american flag": "signs_and_symbols/flags",
    "german flag": "signs_and_symbols/flags",
    "rain cloud": "signs_and_symbols/weather",
    "arrow pointing right": "shapes/arrows",
    "gold star": "shapes/stars",
    "speech bubble": "shapes/callouts",
    "puzzle piece": "shapes/jigsaw",
    "hammer": "tools",
    "sword": "tools/weapons",
    "stack of books": "education/books",
    "world map": "geography",
    "microscope": "science",
}


def top_precision(order: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per query, the share of its first ``TOP`` ranked database rows that are relevant to it.

    ``order`` (nq, nd) ranks the database per query; ``relevant`` (nq, nd) is bool."""
    return np.take_along_axis(relevant, order[:, :TOP], axis=1).mean(1)


def hamming_order(query_signs: np.ndarray, database_signs: np.ndarray) -> np.ndarray:
    """Database rows by Hamming distance to each query, ties by database index (as the protocol)."""
    return np.argsort(hamming_distances(query_signs, database_signs), axis=1, kind="stable")


def score_order(scores: np.ndarray) -> np.ndarray:
    """Database rows by decreasing score per query, ties by database index."""
    return np.argsort(-scores, axis=1, kind="stable")


def word_matches(query: str, texts: list[str]) -> np.ndarray:
    """Indices of the texts that contain every word of the query (whole words, a plural s allowed)."""
    patterns = [re.compile(rf"\b{re.escape(word)}(s|es)?\b", re.I) for word in query.split()]
    return np.array([i for i, text in enumerate(texts) if all(p.search(text) for p in patterns)], dtype=np.int64)


def natural_query_table(
    bundle: Bundle, features: FeatureSet, label_names: list[str], database_texts: list[str]
) -> list[dict]:
    """One row per natural query: its label and the label's share of the database; the P@10 of the
    bundle's images (Hamming, and asymmetric: the query's real code against the images' signs) and of
    the text encoder's own nearest database texts (cosine of the features); and how many database texts
    contain the query's words, with the share of those that carry the label (the labels' own noise)."""
    database_image, database_text, database_labels = features.part("database")
    columns = [label_names.index(label) for label in NATURAL_QUERIES.values()]
    relevant = database_labels[:, columns].T.astype(bool)  # (queries, database)
    query_features = bundle.text_features(list(NATURAL_QUERIES))
    real = bundle.real_codes("text", query_features)
    image_signs = bundle.signs("image", database_image)
    precision = {
        "hamming": top_precision(hamming_order(to_signs(real), image_signs), relevant),
        "asymmetric": top_precision(score_order(real @ image_signs.T), relevant),
        "encoder_texts": top_precision(score_order(query_features @ database_text.T), relevant),
    }
    rows = []
    for i, (text, label) in enumerate(NATURAL_QUERIES.items()):
        matches = word_matches(text, database_texts)
        noise = round(float(relevant[i, matches].mean()), 2) if len(matches) else float("nan")
        rows.append(
            {"query": text, "label": label, "label_share": round(float(relevant[i].mean()), 4)}
            | {name: round(float(values[i]), 2) for name, values in precision.items()}
            | {"word_matches": len(matches), "their_label_share": noise}
        )
    return rows


def short_text_metrics(bundle: Bundle, features: FeatureSet) -> list[dict]:
    """Text→image protocol metrics of the held-out query items with each item's full text, and with each
    of its text views alone (its title, one tag) as the query (Hamming and asymmetric ranking)."""
    _, query_text, query_labels = features.part("query")
    database_image, _, database_labels = features.part("database")
    image_signs = bundle.signs("image", database_image)
    views = features.views("query")
    inputs = {"full text": (query_text, query_labels)}
    if views is not None:
        inputs["one view alone"] = (views.features, query_labels[views.item])
    rows = []
    for name, (x, labels) in inputs.items():
        real = bundle.real_codes("text", x)
        hamming = evaluate_codes(to_signs(real), image_signs, labels, database_labels)
        asymmetric = evaluate_scores(real, image_signs.astype(np.float64), labels, database_labels)
        rows.append(
            {"query text": name, "queries": len(x)}
            | {f"{k} hamming": round(hamming[k], 4) for k in ("mAP", "P@10")}
            | {f"{k} asymmetric": round(asymmetric[k], 4) for k in ("mAP", "P@10")}
        )
    return rows
