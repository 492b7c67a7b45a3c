"""Evaluate a hasher (or raw codes) in both directions and draw the protocol's plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from index.codes import to_signs
from training.evaluation.metrics import evaluate_codes
from training.featurize.pipeline import FeatureSet
from training.methods.base import TrainedHasher

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image")}


def encode_parts(hasher: TrainedHasher, features: FeatureSet) -> dict[str, np.ndarray]:
    """{−1,+1} codes of the query and database parts, per modality: keys like ``query_image``."""
    codes = {}
    for part in ("query", "database"):
        image, text, _ = features.part(part)
        codes[f"{part}_image"] = to_signs(hasher.encoders["image"].real_codes(image))
        codes[f"{part}_text"] = to_signs(hasher.encoders["text"].real_codes(text))
    return codes


def evaluate_directions(codes: dict[str, np.ndarray], query_labels: np.ndarray, db_labels: np.ndarray) -> dict:
    """Image→text and text→image metrics from query/database codes of both modalities."""
    return {
        direction: evaluate_codes(codes[f"query_{q}"], codes[f"database_{d}"], query_labels, db_labels)
        for direction, (q, d) in DIRECTIONS.items()
    }


def evaluate_hasher(hasher: TrainedHasher, features: FeatureSet) -> dict:
    codes = encode_parts(hasher, features)
    return evaluate_directions(codes, features.part("query")[2], features.part("database")[2])


def _plot(metrics: dict, curve: str, x: str, y: str, title: str, path: Path) -> None:
    figure = Figure(figsize=(5, 4))
    axis = figure.subplots()
    for direction, m in metrics.items():
        axis.plot(m[curve][x], m[curve][y], marker=".", label=direction)
    axis.set(xlabel=x, ylabel=y, title=title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def write_report(metrics: dict, out_dir: Path, title: str) -> None:
    """``metrics.json`` plus ``pr_radius.png`` and ``precision_topn.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plot(
        metrics,
        "pr_radius",
        "recall",
        "precision",
        f"{title}: PR by Hamming radius",
        out_dir / "pr_radius.png",
    )
    _plot(
        metrics,
        "precision_topn",
        "n",
        "precision",
        f"{title}: precision@top-N",
        out_dir / "precision_topn.png",
    )


def plot_history(history: list[dict], title: str, path: Path) -> None:
    """Objective (and the monitored ``eval`` value, if any) per outer iteration of a trainer."""
    rows = [h for h in history if "objective" in h and "iteration" in h and "stage" not in h]
    if not rows:
        return
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    axis.plot([h["iteration"] for h in rows], [h["objective"] for h in rows], marker=".", label="objective")
    axis.set(xlabel="outer iteration", ylabel="objective", title=title)
    if any("eval" in h for h in rows):
        other = axis.twinx()
        other.plot([h["iteration"] for h in rows], [h.get("eval") for h in rows], marker=".", color="tab:red")
        other.set_ylabel("MAP@50 (query set, i2t)", color="tab:red")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def summary_row(label: str, bits: int, metrics: dict) -> dict:
    """The scalar metrics of a run, flattened for the results table."""
    row: dict = {"method": label, "bits": bits}
    for direction, m in metrics.items():
        for key in ("mAP", "mAP_tie_averaged", "MAP@50", "P@10"):
            row[f"{direction}_{key}"] = round(m[key], 4)
    return row


def markdown_table(rows: list[dict]) -> str:
    """Rows of the results table (docs/results.md) for a list of summary rows."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
