"""A collection as a training dataset: ordered and split by id (the manifest's row order does not matter)
unless its rows carry their own split, which is then kept whole or refused, labels learnable from the
training part only, pretrained features only, reached through load_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from training.cli import app
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


def _with_splits(folder: Path, split_of: dict[str, str | None]) -> Path:
    """The example collection in ``folder``, each row given the split ``split_of`` names for its id (none
    for an id it does not name, or names as None)."""
    (folder / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    rows = [json.loads(line) for line in (EXAMPLE / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        if split_of.get(row["id"]) is not None:
            row["split"] = split_of[row["id"]]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _ids(dataset, part: str) -> set[str]:
    return {dataset.ids[i] for i in getattr(dataset.split, part)}


EXAMPLE_IDS = sorted(json.loads(line)["id"] for line in (EXAMPLE / "manifest.jsonl").read_text().splitlines())
# Every fifth item a query, every fifth (offset by one) only in the database, the rest trained on.
OWN_SPLIT = {item: ("query", "database", "train", "train", "train")[i % 5] for i, item in enumerate(EXAMPLE_IDS)}


def test_a_manifest_split_is_kept_queries_apart_and_train_and_database_rows_forming_the_database(
    tmp_path: Path,
) -> None:
    dataset = load_collection(_with_splits(tmp_path, OWN_SPLIT))
    marked = {part: {item for item, value in OWN_SPLIT.items() if value == part} for part in ("query", "database")}
    assert dataset.split.sizes() == {"query": 12, "database": 48, "train": 36}
    assert _ids(dataset, "query") == marked["query"]
    assert _ids(dataset, "database") == set(EXAMPLE_IDS) - marked["query"]
    assert _ids(dataset, "train") == set(EXAMPLE_IDS) - marked["query"] - marked["database"]
    assert dataset.stats["split_from"] == "the manifest's split field"
    assert _ids(load_collection(tmp_path, seed=3), "query") == marked["query"]  # the seed does not apply
    assert load_collection(EXAMPLE).stats["split_from"] == "seeded by id, seed 0"


def test_rows_without_a_split_beside_rows_with_one_are_refused_naming_their_lines(tmp_path: Path) -> None:
    unmarked = set(EXAMPLE_IDS[:7])
    folder = _with_splits(tmp_path, {item: None if item in unmarked else part for item, part in OWN_SPLIT.items()})
    rows = (folder / "manifest.jsonl").read_text().splitlines()
    lines = sorted(n for n, row in enumerate(rows, start=1) if json.loads(row)["id"] in unmarked)
    with pytest.raises(ValueError) as refused:
        load_collection(folder)
    assert str(refused.value) == (
        f"7 of 60 rows have no split (line {', '.join(map(str, lines[:5]))}, …) while the others have one: "
        "give every row a split (train, query or database), or none for the seeded split"
    )
    result = CliRunner().invoke(app, ["train", "--dataset", str(folder), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "error: 7 of 60 rows have no split" in result.output


@pytest.mark.parametrize("parts", [("train", "database"), ("query", "database")])
def test_a_manifest_split_without_queries_or_without_training_rows_is_refused(tmp_path: Path, parts) -> None:
    folder = _with_splits(tmp_path, {item: parts[i % 2] for i, item in enumerate(EXAMPLE_IDS)})
    with pytest.raises(ValueError, match="it needs query rows and train rows"):
        load_collection(folder)


def test_train_prints_the_split_sizes_and_trains_on_the_train_rows_only(tmp_path: Path) -> None:
    command = ["train", "--dataset", str(_with_splits(tmp_path, OWN_SPLIT)), "--method", "lsh"]
    result = CliRunner().invoke(app, [*command, "--bits", "16", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (
        "split: 36 train, 12 query, 48 database (train items are in the database too); "
        "the manifest's split field" in result.stderr
    )
    manifest = json.loads((tmp_path / "run" / "16bits" / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["items"] == 36
