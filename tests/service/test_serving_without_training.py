"""The service runs on the base dependencies alone: ``python -m service`` with torch, scikit-learn, the
other training-only packages and the ``training`` package made unimportable starts, ingests raw text and
images, answers a search and reports its model; ``python -m service load`` loads a collection. (The
Docker image installs only the base set.)
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from index.redis_server import RedisServer
from tests.support.faults_service import KEY, ROOT, Service

# The packages of the ``train`` extra (pyproject.toml), and the project's training code.
BLOCKED = ("torch", "sklearn", "scipy", "matplotlib", "h5py", "typer", "training")
EXAMPLE = ROOT / "examples" / "clipart"
LOADED_ROWS = 5
SITECUSTOMIZE = f'''"""Refuses to import what serving must not need (tests/service/test_serving_without_training.py)."""
import sys

BLOCKED = {set(BLOCKED)!r}


class RefuseTrainingStack:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed in a serving-only environment")
        return None


sys.meta_path.insert(0, RefuseTrainingStack())
'''


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _serving_only(tmp_path: Path) -> dict[str, str]:
    """The environment variables of a serving-only interpreter (training's packages refused on import)."""
    blocker = tmp_path / "no-training"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}


def test_the_service_starts_and_answers_without_torch_or_training_code(tmp_path: Path) -> None:
    env = _serving_only(tmp_path)
    for name in BLOCKED:  # the environment really lacks them
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=ROOT, env=os.environ | env, capture_output=True, text=True
        )
        assert probe.returncode != 0 and "not installed in a serving-only environment" in probe.stderr, name
    server = RedisServer(tmp_path / "redis").start()
    service = Service(server.url, tmp_path, index_name="serving-only", env=env)
    try:
        service.start()
        items = [
            {"id": "img/red", "modality": "image", "image_base64": _png(), "metadata": {"title": "red box"}},
            {"id": "txt/apple", "modality": "text", "text": "red apple fruit", "metadata": {"title": "apple"}},
        ]
        stored = service.call("POST", "/v1/items:batch", {"items": items}, key=KEY)
        assert stored.status == 200 and stored.body["stored"] == 2, stored.body
        search = service.call("POST", "/v1/search/text-to-image", {"text": "red apple", "k": 5, "probe": "all"})
        assert search.status == 200 and [hit["id"] for hit in search.body["results"]] == ["img/red"], search.body
        back = service.call("POST", "/v1/search/image-to-text", {"image_base64": _png(), "k": 5, "probe": "all"})
        assert back.status == 200 and [hit["id"] for hit in back.body["results"]] == ["txt/apple"], back.body
        models = service.call("GET", "/v1/models")
        assert models.status == 200 and models.body["method"] == "dsfh-instance" and models.body["code_bits"] == 128
        assert models.body["semantic_index"]["head_bits"] == 128 and models.body["index"]["items"] == {
            "image": 1, "text": 1
        }  # fmt: skip
        assert "is not installed in a serving-only environment" not in service.output()
    finally:
        service.stop()
        server.stop()


def test_a_collection_loads_without_torch_or_training_code(tmp_path: Path) -> None:
    env = _serving_only(tmp_path)
    folder = tmp_path / "collection"
    folder.mkdir()
    (folder / "png").symlink_to((EXAMPLE / "png").resolve(), target_is_directory=True)
    rows = (EXAMPLE / "manifest.jsonl").read_bytes().splitlines()[:LOADED_ROWS]
    (folder / "manifest.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    server = RedisServer(tmp_path / "redis").start()
    try:
        command = [sys.executable, "-m", "service", "load", str(folder), "--redis-url", server.url, "--index", "x"]
        done = subprocess.run(command, cwd=ROOT, env=os.environ | env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["written"] == {"image": LOADED_ROWS, "text": LOADED_ROWS}
    finally:
        server.stop()
