"""A collection as a training dataset: ordered and split by id (the manifest's row order does not matter),
labels learnable from the training part only, pretrained features only, reached through load_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.datasets import load_dataset
from training.datasets.collection import default_queries, load_collection
from training.featurize.pipeline import featurize

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clipart"


@pytest.fixture
def shuffled(tmp_path: Path) -> Path:
    """The example collection with its rows in another order."""
    (tmp_path / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    rows = (EXAMPLE / "manifest.jsonl").read_bytes().splitlines()
    order = np.random.default_rng(7).permutation(len(rows))
    (tmp_path / "manifest.jsonl").write_bytes(b"\n".join(rows[i] for i in order) + b"\n")
    return tmp_path


def _split_ids(dataset) -> tuple[list[str], list[str]]:
    return [dataset.ids[i] for i in dataset.split.query], [dataset.ids[i] for i in dataset.split.database]


def test_the_split_depends_on_the_seed_and_the_ids_not_on_the_row_order(shuffled: Path) -> None:
    original, reordered = load_dataset(str(EXAMPLE / "manifest.jsonl")), load_dataset(str(shuffled))
    assert original.ids == sorted(original.ids) == reordered.ids
    assert _split_ids(original) == _split_ids(reordered)
    assert len(original.split.query) == default_queries(60) == 12
    np.testing.assert_array_equal(original.labels, reordered.labels)
    np.testing.assert_array_equal(original.images, reordered.images)
    assert _split_ids(load_collection(EXAMPLE, seed=1)) != _split_ids(original)


def test_labels_come_from_the_manifest_less_those_no_training_item_has(tmp_path: Path) -> None:
    (tmp_path / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    rows = {row["id"]: row for row in map(json.loads, (EXAMPLE / "manifest.jsonl").read_text().splitlines())}
    split = load_collection(EXAMPLE)
    query, train = (split.ids[i] for i in split.split.query[:1]), [split.ids[i] for i in split.split.train]
    rows[next(query)]["labels"].append("only-a-query-has-it")
    rows[train[0]]["labels"].append("a-training-item-has-it")
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    dataset = load_collection(tmp_path)
    assert dataset.label_names == sorted({label for i in train for label in rows[i]["labels"]})
    assert "a-training-item-has-it" in dataset.label_names and "only-a-query-has-it" not in dataset.label_names
    assert "only-a-query-has-it" in dataset.stats["labels_without_training_items"]
    for i, item in enumerate(dataset.ids):
        assert [dataset.label_names[j] for j in dataset.labels[i].nonzero()[0]] == sorted(
            set(rows[item]["labels"]) & set(dataset.label_names)
        )


def test_a_collection_featurizes_with_the_pretrained_encoders_only() -> None:
    dataset = load_dataset(str(EXAMPLE / "unlabelled.jsonl"))
    assert dataset.labels.shape == (60, 0) and dataset.images.shape == (60, 3, 224, 224)
    features = featurize(dataset)
    assert features.describe()["image_featurizer"] == "efficientnet-lite0" and features.image.shape == (60, 1280)
    with pytest.raises(ValueError, match="pretrained features only"):
        featurize(dataset, kind="classic")


def test_short_texts_become_the_text_views_that_training_fits_and_the_openclipart_export_writes_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    rows = [json.loads(line) for line in (EXAMPLE / "manifest.jsonl").read_text().splitlines()]
    rows[0]["short_texts"] = ["a few words", "tag"]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_collection(tmp_path)
    views = dict(zip(dataset.ids, dataset.text_views, strict=True))
    assert views[rows[0]["id"]] == ["a few words", "tag"] and not any(views[r["id"]] for r in rows[1:])
    assert load_collection(EXAMPLE).text_views == []  # no row has short texts: no views at all
    from training.datasets.openclipart import export_collection, load_openclipart

    corpus = load_openclipart()
    some = {corpus.ids[i]: corpus.text_views[i] for i in range(0, len(corpus.ids), 997)}
    manifest, _ = export_collection(tmp_path / "export", only=set(some))
    exported = {row["id"]: row.get("short_texts", []) for row in map(json.loads, manifest.read_text().splitlines())}
    assert exported == some and any(exported.values())
