"""The OpenAPI document states every rule the server enforces: schemathesis' own CLI, every check
(``--checks all``: no 5xx, documented statuses, headers and bodies, schema-valid requests accepted and
schema-invalid ones rejected, ``Allow`` on 405), seed 4242, against the service over real HTTP.

The service runs the committed default model on a real redis-server with seeded items and an API key
that every request carries, so writes (batch ingest, delete, model swap) run for real. The formats the
document declares for what JSON Schema cannot state (a decodable image, a word of the vocabulary) get
their values from ``tests/support/contract/hooks.py``; ``tests/support/contract/schemathesis.toml`` counts 413 (a batch
over its declared ``maxItems``) among the rejections of schema-invalid requests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from service.settings import DEFAULT_BUNDLE, Settings
from tests.support.page_service import served

ROOT = Path(__file__).resolve().parents[2]
KEY = "contract-key"
SEED = 4242
MAX_EXAMPLES = 12  # per operation and phase: ~1-2 minutes on two shared cores
SEEDED = 20


def _seed(base_url: str) -> None:
    words = ["red", "apple", "car", "tree", "bird", "house", "blue", "green"]
    items = [
        {"id": f"seed/txt{i}", "modality": "text", "text": f"{words[i % 8]} {words[(i * 3) % 8]}"}
        for i in range(SEEDED)
    ]
    response = httpx.post(f"{base_url}/v1/items:batch", json={"items": items}, headers={"X-API-Key": KEY})
    assert response.status_code == 200 and response.json()["stored"] == SEEDED, response.text


def test_schemathesis_with_every_check_finds_no_failure(redis_server, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "default").symlink_to(DEFAULT_BUNDLE)
    settings = Settings(
        redis_url=redis_server.url,
        bundle_path=DEFAULT_BUNDLE,
        models_dir=models,
        index_name=f"contract-{uuid.uuid4().hex[:12]}",
        api_key=KEY,
        demo_corpus=False,
    )
    with served(settings) as base_url:
        _seed(base_url)
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(ROOT / "tests/support/contract/schemathesis.toml"),
            "run",
            f"{base_url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--header",
            f"X-API-Key: {KEY}",
            "--no-color",
        ]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.contract.hooks", "PYTHONPATH": str(ROOT)}
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    output = run.stdout + run.stderr
    summary = output[output.rfind("SUMMARY") :]
    print(summary)  # shown with `pytest -s`: operations, phases, cases generated
    assert run.returncode == 0, output[-20000:]
    assert re.search(r"Tested: 16\b", summary), summary  # every operation was reached
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert cases and int(cases[1]) == int(cases[2]) > 500, summary  # every generated case passed every check
