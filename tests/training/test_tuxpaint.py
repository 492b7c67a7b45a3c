"""Tux Paint's stamps as a collection, on a small stamps tree made here (never the installed package): an
item per PNG with an English description, labels from the first two folder levels kept at five members,
the file name as a short text, translations in metadata, and what is left out counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from index.collection import read_collection
from training.cli import app
from training.datasets.base import DatasetNotFoundError
from training.datasets.tuxpaint import (
    MIN_LABEL_MEMBERS,
    collection_rows,
    export_collection,
    name_words,
    read_description,
    scan_stamps,
)

BIRDS = ("robin", "crow", "owl", "lark", "heron")  # animals/birds: five, the threshold
FISH = ("cod", "eel")  # animals/fish: two, under it
QUARTER = "A US 25 cent piece ($.25) called a quarter."


def _stamp(root: Path, relative: str, description: str | None, image: str = "png") -> None:
    """A stamp at ``root/relative`` (no suffix): a small image, and its description file unless None."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if image == "png":
        Image.new("RGBA", (16, 12), (200, 30, 30, 255)).save(path.with_suffix(".png"))
    else:
        path.with_suffix(".svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    if description is not None:
        path.with_suffix(".txt").write_text(description, encoding="utf-8")


@pytest.fixture
def stamps(tmp_path: Path) -> Path:
    """Nine described stamps in three folders, plus what is not an item: a PNG without a description, one
    whose first line is a translation, a mirror variant, and an SVG-only stamp."""
    root = tmp_path / "stamps"
    for name in BIRDS:
        _stamp(root, f"animals/birds/{name}", f"A {name}.\n")
    for name in FISH:
        _stamp(root, f"animals/fish/{name}", f"A {name}.\n")
    _stamp(
        root,
        "symbols/money/us/coins/025quarter",
        f"{QUARTER}\nde.utf8=Eine 25-Cent-Münze der USA.\nes.utf8=Una moneda.\n"
        "fr.utf8=Une pièce de 25 cents.\nzh_CN.utf8=美元二十五分硬币。\nzh_TW.utf8=美國的二角五分錢\n",
    )
    _stamp(root, "medical/stethoscope", "A stethoscope.\nfr.utf8=\n")
    _stamp(root, "animals/birds/crow_mirror", None)
    _stamp(root, "animals/fish/tuna", None)
    _stamp(root, "animals/fish/carp", "fr.utf8=Une carpe.\n")
    _stamp(root, "symbols/shapes/speech_balloon", "A speech balloon.\n", image="svg")
    return root


def _rows(stamps: Path) -> dict[str, dict]:
    return {row["id"]: row for row in collection_rows(scan_stamps(stamps).stamps)}


def test_an_item_is_a_png_with_an_english_description_its_text_the_first_line(stamps: Path) -> None:
    rows = _rows(stamps)
    assert len(rows) == len(BIRDS) + len(FISH) + 2
    quarter = rows["tuxpaint/symbols/money/us/coins/025quarter"]
    assert quarter["text"] == QUARTER
    assert quarter["image"] == "stamps/symbols/money/us/coins/025quarter.png"
    assert rows["tuxpaint/animals/birds/robin"]["text"] == "A robin."


def test_pngs_without_an_english_description_are_skipped_and_counted_and_variants_and_svgs_are_no_items(
    stamps: Path,
) -> None:
    scan = scan_stamps(stamps)
    assert scan.without_description == ["tuxpaint/animals/fish/carp", "tuxpaint/animals/fish/tuna"]
    assert scan.variants == 1  # crow_mirror.png: the crow stamp drawn for the mirror tool
    assert scan.svg_only == 1
    assert not {"tuxpaint/animals/birds/crow_mirror", "tuxpaint/symbols/shapes/speech_balloon"} & set(_rows(stamps))


def test_labels_are_the_first_two_folder_levels_kept_when_five_items_carry_them(stamps: Path) -> None:
    assert MIN_LABEL_MEMBERS == len(BIRDS) == 5
    rows = _rows(stamps)
    assert rows["tuxpaint/animals/birds/owl"]["labels"] == ["animals", "animals/birds"]
    assert rows["tuxpaint/animals/fish/cod"]["labels"] == ["animals"]  # animals/fish: two members
    assert rows["tuxpaint/symbols/money/us/coins/025quarter"]["labels"] == []  # symbols: one member
    assert rows["tuxpaint/medical/stethoscope"]["labels"] == []  # kept: instance retrieval needs no label
    everything = {row["id"]: row["labels"] for row in collection_rows(scan_stamps(stamps).stamps, 1)}
    assert everything["tuxpaint/symbols/money/us/coins/025quarter"] == ["symbols", "symbols/money"]


def test_translations_go_into_metadata_when_present(stamps: Path) -> None:
    rows = _rows(stamps)
    assert rows["tuxpaint/symbols/money/us/coins/025quarter"]["metadata"] == {
        "text_de": "Eine 25-Cent-Münze der USA.",
        "text_fr": "Une pièce de 25 cents.",
        "text_zh": "美元二十五分硬币。",
    }
    assert "metadata" not in rows["tuxpaint/medical/stethoscope"]  # an empty translation is none
    assert "metadata" not in rows["tuxpaint/animals/birds/robin"]


def test_german_is_taken_from_de_DE_before_de(tmp_path: Path) -> None:
    description = tmp_path / "x.txt"
    description.write_text("A thing.\nde.utf8=Ein Ding.\nde_DE.utf8=Ein deutsches Ding.\n", encoding="utf-8")
    assert read_description(description) == ("A thing.", {"text_de": "Ein deutsches Ding."})


@pytest.mark.parametrize(
    ("stem", "words"),
    [
        ("025quarter", "025 quarter"),
        ("050kennedy-halfdollar", "050 kennedy halfdollar"),
        ("apple_granny_smith", "apple granny smith"),
        ("cementMixer", "cement Mixer"),
        ("flower10", "flower 10"),
        ("A_with_umlaut_filled", "A with umlaut filled"),
        ("001", "001"),
    ],
)
def test_the_short_text_is_the_file_name_as_words(stem: str, words: str) -> None:
    assert name_words(stem) == words


def test_the_export_is_a_collection_the_reader_takes_whole(stamps: Path, tmp_path: Path) -> None:
    manifest, counts = export_collection(tmp_path / "out", root=stamps)
    assert counts == {
        "items": 9,
        "skipped without a description": 2,
        "mirror/flip variants": 1,
        "SVG-only stamps": 1,
        "labels": 2,
        "distinct texts": 9,
    }
    assert (tmp_path / "out" / "stamps").resolve() == stamps.resolve()
    collection = read_collection(manifest)
    assert collection.skipped == [] and len(collection.items) == 9
    robin = next(item for item in collection.items if item.id == "tuxpaint/animals/birds/robin")
    assert robin.short_texts == ("robin",) and robin.labels == ("animals", "animals/birds")
    assert collection.image_file(robin).resolve() == (stamps / "animals/birds/robin.png").resolve()


def test_the_command_reads_the_root_from_TUXPAINT_STAMPS_and_says_how_to_install_it_when_missing(
    stamps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUXPAINT_STAMPS", str(stamps))
    result = CliRunner().invoke(app, ["export-collection", "tuxpaint", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "9 items, 2 skipped without a description" in result.output
    assert len((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()) == 9
    assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])["id"].startswith("tuxpaint/")
    monkeypatch.setenv("TUXPAINT_STAMPS", str(tmp_path / "absent"))
    result = CliRunner().invoke(app, ["export-collection", "tuxpaint", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "apt-get install tuxpaint-stamps-default" in result.output
    with pytest.raises(DatasetNotFoundError):
        scan_stamps(tmp_path / "absent")
