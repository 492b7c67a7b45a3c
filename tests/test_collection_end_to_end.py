"""A collection of one's own, from manifest to served model: the README's three commands run as written
(train, load, serve: only the output folder, the Redis and the index name differ), an unlabelled
collection trained with UDDH and served, and a manifest with broken rows trained and loaded with each
bad row reported with its reason. Each model is trained once (a module fixture); it is loaded into and
served from the plain redis-server and the Redis Cluster alike (``any_redis``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "clipart"
README_OUT = "var/runs/clipart"


def readme_commands() -> list[str]:
    """The three lines of the README's collection example: train, load, serve."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "examples/clipart" in b)
    return [line.strip() for line in block.splitlines() if line.strip()]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-4000:])
    return done


def _python(line: str) -> list[str]:
    return [sys.executable if word == ".venv/bin/python" else word for word in shlex.split(line)]


def train(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "training", "train", *args])


def load(redis_url: str, index: str, *args: str) -> dict:
    done = _run([sys.executable, "-m", "service", "load", *args, "--redis-url", redis_url, "--index", index])
    return json.loads(done.stdout)


def serve(server, bundle: Path, index: str) -> TestClient:
    settings = Settings(redis_url=server.url, bundle_path=bundle, index_name=index, demo_corpus=False)
    return TestClient(create_app(settings))


def _hits(client: TestClient, text: str, k: int = 5) -> list[str]:
    reply = client.post("/v1/search/text-to-image", json={"text": text, "k": k, "probe": "all"})
    assert reply.status_code == 200, reply.text
    return [hit["id"] for hit in reply.json()["results"]]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's train command as written but for its output folder: that folder and the run."""
    train_line = readme_commands()[0]
    assert train_line.startswith(".venv/bin/python -m training train") and README_OUT in train_line
    out = tmp_path_factory.mktemp("readme") / "run"
    return out, _run(_python(train_line.replace(README_OUT, str(out))))


def test_the_readme_commands_train_load_and_serve_the_example_collection(
    any_redis, readme_run: tuple[Path, subprocess.CompletedProcess]
) -> None:
    out, trained = readme_run
    _, load_line, serve_line = readme_commands()
    assert "method: dsfh (the dataset has labels)" in trained.stderr
    assert "| dsfh | 32 |" in trained.stdout and (out / "32bits" / "metrics.json").is_file()

    index = uuid.uuid4().hex
    assert load_line.startswith(".venv/bin/python -m service load examples/clipart")
    command = _python(load_line.replace(README_OUT, str(out)))
    report = json.loads(_run([*command, "--redis-url", any_redis.url, "--index", index]).stdout)
    assert report["written"] == {"image": 60, "text": 60} and report["skipped"] == 0

    environment = dict(word.split("=", 1) for word in shlex.split(serve_line) if "=" in word)
    assert serve_line.endswith(".venv/bin/python -m service") and environment["XMHASH_DEMO_CORPUS"] == "false"
    bundle = Path(environment["XMHASH_BUNDLE_PATH"].replace(README_OUT, str(out)))
    with serve(any_redis, bundle, index) as client:
        assert client.get("/v1/models").json()["index"]["items"] == {"image": 60, "text": 60}
        found = _hits(client, "bicycle")
        assert "img:transportation/vehicles/bicycle_01" in found, found
        hit = client.post("/v1/search/text-to-image", json={"text": "bicycle", "k": 1}).json()["results"][0]
        assert hit["metadata"]["collection"] == "clipart" and "transportation" in hit["metadata"]["labels"]
        assert client.get(f"/v1/thumbnails/{hit['id']}").status_code == 200
        pear = client.get("/v1/items/txt:food/fruit/pera_architetto_francesc_01").json()
        assert pear["metadata"]["title"] == "Pera food fruit · Obst, Früchte · fruta · 果物"  # as the manifest has it


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("unlabelled") / "run"
    return out, train("--dataset", str(EXAMPLE / "unlabelled.jsonl"), "--bits", "32", "--out", str(out),
                      "--param", "outer_iterations=2")  # fmt: skip


def test_an_unlabelled_collection_trains_with_uddh_reports_no_metrics_and_serves(
    any_redis, unlabelled_run: tuple[Path, subprocess.CompletedProcess]
) -> None:
    out, trained = unlabelled_run
    assert "method: uddh (the dataset has no labels)" in trained.stderr
    assert "no labels: no retrieval metrics" in trained.stderr
    assert "mAP" not in trained.stdout and not (out / "32bits" / "metrics.json").exists()
    bundle = out / "32bits" / "bundle"
    assert json.loads((bundle / "manifest.json").read_text())["method"] == "uddh"
    index = uuid.uuid4().hex
    report = load(any_redis.url, index, str(EXAMPLE / "unlabelled.jsonl"), "--bundle", str(bundle))
    assert report["written"] == {"image": 60, "text": 60}
    with serve(any_redis, bundle, index) as client:
        hit = client.post("/v1/search/text-to-image", json={"text": "bicycle", "k": 1}).json()["results"][0]
        assert hit["id"].startswith("img:") and hit["metadata"]["labels"] == []


BROKEN_ROWS = [
    b'{"id": "missing", "image": "png/food/fruit/no_such_file.png", "text": "gone"}',
    b'{"id": "corrupt", "image": "corrupt.png", "text": "broken picture"}',
    b'{"id": "empty", "image": "png/food/fruit/an_apple_01.png", "text": " "}',
    b'{"id": "utf8", "image": "png/food/fruit/an_apple_01.png", "text": "caf\xe9"}',
    b'{"id": "json", "image": "png/food/fruit/an_apple_01.png", "text": "no end"',
]
GOOD_ROWS = 40


@pytest.fixture(scope="module")
def broken_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's first GOOD_ROWS rows, a duplicate of one, and a row broken in each other way."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    good = (EXAMPLE / "manifest.jsonl").read_bytes().splitlines()[:GOOD_ROWS]
    duplicate = json.loads(good[0]) | {"text": "the same id again"}
    rows = [*good[:10], *BROKEN_ROWS, json.dumps(duplicate).encode(), *good[10:]]
    (folder / "manifest.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    return folder


@pytest.fixture(scope="module")
def broken_run(
    tmp_path_factory: pytest.TempPathFactory, broken_collection: Path
) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("broken-run") / "run"
    return out, train("--dataset", str(broken_collection), "--bits", "16", "--out", str(out))


def test_a_manifest_with_broken_rows_trains_and_loads_the_good_rows_and_reports_each_bad_one(
    any_redis, broken_collection: Path, broken_run: tuple[Path, subprocess.CompletedProcess]
) -> None:
    expected = {
        11: "image file missing",
        12: "image does not decode",
        13: "empty text",
        14: "bad UTF-8",
        15: "bad JSON",
        16: "duplicate id (first on line 1)",
    }
    out, trained = broken_run
    assert "6 rows skipped" in trained.stderr and "method: dsfh" in trained.stderr
    listed = {row["line"]: row["reason"] for row in json.loads((out / "skipped_rows.json").read_text())}
    assert set(listed) == set(expected) and all(expected[line] in listed[line] for line in expected)
    bundle = out / "16bits" / "bundle"
    assert json.loads((bundle / "manifest.json").read_text())["training"]["items"] == GOOD_ROWS - GOOD_ROWS // 5

    index = uuid.uuid4().hex
    report = load(any_redis.url, index, str(broken_collection), "--bundle", str(bundle))
    assert report["written"] == {"image": GOOD_ROWS, "text": GOOD_ROWS}
    reported = {row["line"]: row["reason"] for row in report["skipped_rows"]}
    assert set(reported) == set(expected) and all(expected[line] in reported[line] for line in expected)
    with serve(any_redis, bundle, index) as client:
        assert client.get("/v1/models").json()["index"]["items"] == {"image": GOOD_ROWS, "text": GOOD_ROWS}
        assert _hits(client, "a bird")
