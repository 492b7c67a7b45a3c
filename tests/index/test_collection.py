"""Reading a collection's manifest: good rows exactly as written, in any language; every bad row skipped,
counted and listed with its line and reason, never fatal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from index.collection import CollectionError, inside_path, is_collection, manifest_path, read_collection


def _png(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _row(**fields) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode("utf-8")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c", "d"):
        (tmp_path / "img" / f"{name}.png").write_bytes(_png())
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (tmp_path / "img" / "truncated.png").write_bytes(_png(64)[:-40])
    (tmp_path / "img" / "text.png").write_text("not an image")
    return tmp_path


def _write(folder: Path, lines: list[bytes], name: str = "manifest.jsonl") -> Path:
    path = folder / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


TEXTS = {
    "a": "Ein Apfel, rot und rund · une pomme",
    "b": "赤いりんごとバナナ",
    "c": "تفاحة حمراء 🍎",
}


def test_good_rows_are_read_as_written_in_any_language(folder: Path) -> None:
    lines = [
        _row(id="apple", image="img/a.png", text=TEXTS["a"], labels=["fruit", "red", "fruit"], metadata={"k": 1}),
        _row(image="img/b.png", text=TEXTS["b"]),
        _row(id="c", image="./img/c.png", text=f"  {TEXTS['c']}\n", labels=[]),
    ]
    manifest = _write(folder, [b"\xef\xbb\xbf" + lines[0], *lines[1:]])  # a BOM as some editors write it
    collection = read_collection(folder)
    assert collection.manifest == manifest.resolve() and not collection.skipped
    assert [item.id for item in collection.items] == ["apple", "img/b", "c"]  # default id: the path sans suffix
    assert [item.text for item in collection.items] == [TEXTS["a"], TEXTS["b"], TEXTS["c"]]
    apple = collection.items[0]
    assert apple.labels == ("fruit", "red") and apple.metadata == {"k": 1} and apple.line == 1
    assert collection.items[2].image == "img/c.png" and collection.items[2].labels == ()
    assert collection.image_file(apple) == folder.resolve() / "img" / "a.png"


def test_every_bad_row_is_skipped_with_its_line_and_reason(folder: Path) -> None:
    lines = [
        _row(id="ok", image="img/a.png", text="fine"),
        _row(id="missing", image="img/nothing.png", text="gone"),
        _row(id="corrupt", image="img/corrupt.png", text="broken"),
        _row(id="truncated", image="img/truncated.png", text="cut short"),
        _row(id="not-image", image="img/text.png", text="text file"),
        _row(id="empty", image="img/b.png", text="   "),
        _row(id="no-text", image="img/b.png"),
        b'{"id": "bad-utf8", "image": "img/b.png", "text": "caf\xe9"}',
        b'{"id": "bad-json", "image": "img/b.png", "text": "x"',
        _row(id="ok", image="img/c.png", text="second ok"),
        b'["a", "list"]',
        _row(id="typo", image="img/b.png", text="x", lables=["a"]),
        _row(id="escape", image="../outside.png", text="x"),
        _row(id="absolute", image="/etc/passwd", text="x"),
        _row(id="labels", image="img/b.png", text="x", labels="fruit"),
        _row(id="metadata", image="img/b.png", text="x", metadata=[1]),
        b'{"id": "surrogate", "image": "img/b.png", "text": "\\ud800"}',
        _row(id=7, image="img/b.png", text="x"),
        b"",
        _row(id="last", image="img/d.png", text="also fine"),
    ]
    collection = read_collection(_write(folder, lines))
    assert [item.id for item in collection.items] == ["ok", "last"]
    reasons = {(s.line, s.id): s.reason for s in collection.skipped}
    expected = {
        (2, "missing"): "image file missing",
        (3, "corrupt"): "image does not decode",
        (4, "truncated"): "image does not decode",
        (5, "not-image"): "image does not decode",
        (6, "empty"): "empty text",
        (7, "no-text"): "empty text",
        (8, None): "bad UTF-8",
        (9, None): "bad JSON",
        (10, "ok"): "duplicate id (first on line 1)",
        (11, None): "row is not a JSON object",
        (12, "typo"): "unknown field 'lables'",
        (13, "escape"): "image must be a path relative to the manifest's folder",
        (14, "absolute"): "image must be a path relative to the manifest's folder",
        (15, "labels"): "labels must be a list of non-empty strings",
        (16, "metadata"): "metadata must be a JSON object",
        (17, "surrogate"): "unpaired surrogate",
        (18, None): "id must be a non-empty string",
    }
    assert set(reasons) == set(expected)
    for where, reason in expected.items():
        assert reason in reasons[where], (where, reasons[where])
    report = collection.report()
    assert report["items"] == 2 and report["skipped"] == len(expected) == len(report["skipped_rows"])


def test_a_manifest_is_a_jsonl_file_or_a_folder_holding_one(folder: Path, tmp_path: Path) -> None:
    manifest = _write(folder, [_row(image="img/a.png", text="x")], name="mine.jsonl")
    assert manifest_path(manifest) == manifest.resolve() and is_collection(str(manifest))
    assert not is_collection(folder)  # no manifest.jsonl in it yet
    with pytest.raises(CollectionError, match=r"manifest\.jsonl"):
        manifest_path(folder)
    _write(folder, [_row(image="img/a.png", text="x")])
    assert is_collection(folder) and manifest_path(folder) == (folder / "manifest.jsonl").resolve()
    assert not is_collection("openclipart")


@pytest.mark.parametrize(
    ("path", "inside"),
    [("a.png", True), ("x/y/a.png", True), ("./a.png", True), ("../a.png", False), ("x/../../a.png", False),
     ("x/../a.png", False), ("/abs.png", False), ("", False), (".", False), ("a\0.png", False), (3, False)],
)  # fmt: skip
def test_only_paths_that_stay_inside_the_folder_are_accepted(path, inside: bool) -> None:
    assert (inside_path(path) is not None) == inside


def test_short_texts_are_read_without_blanks_repeats_or_the_full_text_and_must_be_strings(folder: Path) -> None:
    lines = [
        _row(
            id="a", image="img/a.png", text="A red apple", short_texts=["apple", " apple ", "", "A red apple", "fruit"]
        ),
        _row(id="b", image="img/b.png", text="A banana"),
        _row(id="c", image="img/c.png", text="A cherry", short_texts="cherry"),
        _row(id="d", image="img/d.png", text="A date", short_texts=["date", 3]),
    ]
    collection = read_collection(_write(folder, lines))
    assert [item.short_texts for item in collection.items] == [("apple", "fruit"), ()]
    assert {row.id: row.reason for row in collection.skipped} == {
        "c": "short_texts must be a list of strings",
        "d": "short_texts must be a list of strings",
    }


def test_a_row_may_carry_its_split_and_a_split_that_is_not_train_query_or_database_is_skipped(folder: Path) -> None:
    lines = [
        _row(id="a", image="img/a.png", text="x", split="train"),
        _row(id="b", image="img/b.png", text="x", split="query"),
        _row(id="c", image="img/c.png", text="x", split="database"),
        _row(id="d", image="img/d.png", text="x"),
        _row(id="test", image="img/a.png", text="x", split="test"),
        _row(id="upper", image="img/a.png", text="x", split="Train"),
        _row(id="null", image="img/a.png", text="x", split=None),
        _row(id="list", image="img/a.png", text="x", split=["train"]),
    ]
    collection = read_collection(_write(folder, lines))
    assert [(item.id, item.split) for item in collection.items] == [
        ("a", "train"), ("b", "query"), ("c", "database"), ("d", None)
    ]  # fmt: skip
    assert {row.id: row.reason for row in collection.skipped} == {
        "test": 'split must be one of: train, query, database (got "test")',
        "upper": 'split must be one of: train, query, database (got "Train")',
        "null": "split must be one of: train, query, database (got null)",
        "list": 'split must be one of: train, query, database (got ["train"])',
    }


def test_a_line_that_is_no_json_is_skipped_with_a_reason_that_reads_as_a_sentence(folder: Path) -> None:
    lines = [
        b'{"id": "a", "image": "img/a.png", "text": "no closing quote}',
        b'{"id": "b", "image": "img/b.png", "text": "x"} trailing',
        b'{"id": "c", "image": "img/c.png", "text": "x",}',
        b'{"id": "d", "image": "img/d.png", "text": "caf\xe9"}',
    ]
    collection = read_collection(_write(folder, lines))
    assert [row.reason for row in collection.skipped] == [
        "bad JSON: unterminated string starting at column 43",  # where the string's quote is
        "bad JSON: extra data at column 48",
        "bad JSON: expecting property name enclosed in double quotes at column 47",
        "bad UTF-8: invalid continuation byte at byte 47 of the line",  # the Latin-1 é
    ]
