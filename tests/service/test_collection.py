"""Loading a collection into an index (``service.collection``, ``python -m service load``): every good row
once as an image item and a text item with its metadata (whatever its split), bad rows reported with
their reasons, and a run after an interruption (Ctrl-C or SIGTERM, which reports and hints alike) writes
exactly what is missing without featurizing anything twice."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest

from index.bundle import load_bundle
from index.code_space import CodeSpace
from index.collection import read_collection
from index.engine import HashIndex, Item
from service import collection as loading
from service.settings import DEFAULT_BUNDLE
from training.datasets.openclipart import DEFAULT_ROOT

PICTURES = [
    "food/fruit/an_apple_01",
    "food/fruit/banana",
    "animals/birds/baby_tux_01",
    "recreation/music/guitar_ganson",
]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


def _loader(server, bundle) -> tuple[loading.Loader, HashIndex]:
    """A loader into a fresh index of its own name."""
    client, name = server.client(), uuid.uuid4().hex
    index = HashIndex.open(
        client, name, CodeSpace(bundle.bundle_id, bundle.bits, bundle.centers, bundle.centers_version)
    )
    return loading.Loader(bundle, index, client, name, 50_000_000), index


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _damaged_png() -> bytes:
    """A PNG whose compressed pixel data is garbage under correct checksums: the reader's cheap check
    (open + verify) passes it; only decoding finds it."""
    header = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 200)
        + _chunk(b"IEND", b"")
    )


@pytest.fixture
def collection_folder(tmp_path: Path) -> Path:
    """Four real pictures with texts in three languages, and rows broken in every way a manifest can be."""
    (tmp_path / "pics").mkdir()
    rows = []
    texts = ["a red apple", "eine gelbe Banane", "ペンギン", "a guitar"]
    for picture, text in zip(PICTURES, texts, strict=True):
        name = Path(picture).name
        (tmp_path / "pics" / f"{name}.png").write_bytes((DEFAULT_ROOT / "png" / f"{picture}.png").read_bytes())
        label = picture.split("/")[0]
        rows.append(json.dumps({"id": name, "image": f"pics/{name}.png", "text": text, "labels": [label]}))
    (tmp_path / "pics" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (tmp_path / "pics" / "damaged.png").write_bytes(_damaged_png())
    rows += [
        json.dumps({"id": "missing", "image": "pics/none.png", "text": "gone"}),
        json.dumps({"id": "corrupt", "image": "pics/corrupt.png", "text": "broken"}),
        json.dumps({"id": "damaged", "image": "pics/damaged.png", "text": "decodes badly"}),
        json.dumps({"id": "empty", "image": "pics/an_apple_01.png", "text": ""}),
        json.dumps({"id": "an_apple_01", "image": "pics/banana.png", "text": "a duplicate id"}),
        '{"id": "json", "image": ',
    ]
    (tmp_path / "manifest.jsonl").write_bytes("\n".join(rows).encode() + b'\n{"id": "utf8", "text": "\xff"}\n')
    return tmp_path


def _reasons(report: loading.LoadReport) -> dict[int, str]:
    return {s.line: s.reason for s in report.skipped}


def test_good_rows_become_an_image_and_a_text_item_and_bad_rows_are_reported(
    any_redis, bundle, collection_folder: Path
) -> None:
    loader, index = _loader(any_redis, bundle)
    collection = read_collection(collection_folder)
    report = loader.load(collection, "mine")
    loaded = ["an_apple_01", "banana", "baby_tux_01", "guitar_ganson"]
    assert report.written == {"image": 4, "text": 4}
    assert index.stats()["items"] == {"image": 4, "text": 4}
    reasons = _reasons(report)
    assert sorted(reasons) == [5, 6, 7, 8, 9, 10, 11]
    assert "image file missing" in reasons[5] and "image does not decode" in reasons[6]
    assert "cannot decode image" in reasons[7]  # passed the reader's cheap check, failed decoding here
    assert "empty text" in reasons[8] and "duplicate id" in reasons[9]
    assert "bad JSON" in reasons[10] and "bad UTF-8" in reasons[11]
    apple = index.get("img:an_apple_01")
    assert apple.metadata == {
        "title": "a red apple", "labels": ["food"], "collection": "mine", "image": "pics/an_apple_01.png"
    }  # fmt: skip
    assert index.get("txt:banana").metadata["title"] == "eine gelbe Banane"
    query = bundle.packed_codes("text", bundle.text_features(["ペンギン"]))
    assert index.search("text", query, 1)[0][0].id == "txt:baby_tux_01"
    assert {f"img:{i}" for i in loaded} == {h.id for h in index.search("image", query, 10)[0]}


def test_a_second_run_writes_nothing_and_an_interrupted_run_resumes_without_duplicates(
    any_redis, bundle, collection_folder: Path, monkeypatch
) -> None:
    loader, index = _loader(any_redis, bundle)
    collection = read_collection(collection_folder)
    monkeypatch.setattr(loading, "CHUNK", 2)
    written = loading.write_chunk
    calls = []

    def interrupted(index, modality, ids, codes, metadata):
        calls.append(ids)
        if len(calls) == 3:  # the second chunk's image write: the first chunk is stored, nothing else
            raise KeyboardInterrupt
        written(index, modality, ids, codes, metadata)

    monkeypatch.setattr(loading, "write_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loader.load(collection, "mine")
    assert index.stats()["items"] == {"image": 2, "text": 2}

    monkeypatch.setattr(loading, "write_chunk", written)
    featurized = {"image": 0, "text": 0}
    image_features, text_features = bundle.image_features, bundle.text_features

    def count_images(pixels):
        featurized["image"] += len(pixels)
        return image_features(pixels)

    def count_texts(texts):
        featurized["text"] += len(texts)
        return text_features(texts)

    monkeypatch.setattr(bundle, "image_features", count_images)
    monkeypatch.setattr(bundle, "text_features", count_texts)
    report = loader.load(collection, "mine")
    assert report.written == {"image": 2, "text": 2} and report.already_stored == {"image": 2, "text": 2}
    assert featurized == {"image": 2, "text": 2}  # only what was missing was featurized
    assert index.stats()["items"] == {"image": 4, "text": 4}
    again = loader.load(collection, "mine")
    assert again.written == {"image": 0, "text": 0} and again.already_stored == {"image": 4, "text": 4}
    assert featurized == {"image": 2, "text": 2}
    assert index.stats()["items"] == {"image": 4, "text": 4}


def test_an_id_another_writer_stored_under_the_other_modality_is_reported_not_overwritten(
    any_redis, bundle, collection_folder: Path
) -> None:
    loader, index = _loader(any_redis, bundle)
    code = bundle.packed_codes("text", bundle.text_features(["someone else's text"]))
    index.add([Item("img:banana", "text", code[0], {"owner": "someone else"})])
    report = loader.load(read_collection(collection_folder), "mine")
    assert report.written == {"image": 3, "text": 4}
    assert "img:banana is stored as a text item" in _reasons(report)[2]
    assert index.get("img:banana").metadata == {"owner": "someone else"}


def test_the_loader_loads_every_row_whatever_its_split(any_redis, bundle, collection_folder: Path) -> None:
    manifest = collection_folder / "manifest.jsonl"
    rows = manifest.read_bytes().split(b"\n")
    for line, part in enumerate(("train", "query", "database", "query")):
        rows[line] = json.dumps(json.loads(rows[line]) | {"split": part}).encode()
    manifest.write_bytes(b"\n".join(rows))
    loader, index = _loader(any_redis, bundle)
    report = loader.load(read_collection(collection_folder), "mine")
    assert report.written == {"image": 4, "text": 4} and index.stats()["items"] == {"image": 4, "text": 4}


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "clipart"


def _stderr_until(process: subprocess.Popen, wanted: bytes, seconds: float) -> bytes:
    """What ``process`` wrote to stderr until ``wanted`` appeared in it (a progress bar writes no newline)."""
    seen, deadline = b"", time.monotonic() + seconds
    while wanted not in seen:
        assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors="replace")
        seen += os.read(process.stderr.fileno(), 4096)
    return seen


def test_a_load_stopped_by_sigterm_reports_what_it_wrote_and_says_to_run_it_again(
    any_redis, bundle, tmp_path: Path
) -> None:
    """A real ``python -m service load`` sent SIGTERM once its first chunk is stored: like Ctrl-C, it
    prints the report so far and the hint, exits 130, and the index holds what the report says."""
    (tmp_path / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    rows = [json.loads(line) for line in (EXAMPLE / "manifest.jsonl").read_text().splitlines()]
    copies = [row | {"id": f"{row['id']}-{copy}"} for copy in range(4) for row in rows]  # 240 rows, 4 chunks
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in copies))
    name = uuid.uuid4().hex
    command = [sys.executable, "-m", "service", "load", str(tmp_path), "--bundle", str(DEFAULT_BUNDLE)]
    command += ["--redis-url", any_redis.url, "--index", name]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        _stderr_until(process, f"{loading.CHUNK}/{len(copies)}".encode(), seconds=120)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode(errors="replace")
    assert "interrupted: run the same command again to load the rest" in stderr.decode()
    report = json.loads(stdout)
    assert report["interrupted"] is True and report["index"] == name
    assert loading.CHUNK <= report["written"]["image"] < len(copies)
    client = any_redis.client()
    index = HashIndex.open(
        client, name, CodeSpace(bundle.bundle_id, bundle.bits, bundle.centers, bundle.centers_version)
    )
    assert index.stats()["items"] == report["written"]
