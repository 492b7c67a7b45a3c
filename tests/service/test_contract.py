"""The OpenAPI document states every rule the server enforces that OpenAPI can state: schemathesis' own CLI,
run plain (no project hooks, no config file: what anyone runs against ``/openapi.json``), every check
(``--checks all``: no 5xx, documented statuses, headers and bodies, schema-valid requests accepted and
schema-invalid ones rejected, ``Allow`` on 405), seed 4242, going on after a failure, against the service
over real HTTP.

The service runs the committed default model on a real redis-server with seeded items and an API key
that every request carries, so writes (batch ingest, delete, model swap) run for real. What no OpenAPI
keyword can state is that an image's bytes (an upload, or ``image_base64`` once decoded) decode as an
image: the only failures the run may find are schema-valid requests of the four image operations that
the service refuses for that reason, each a problem-details 422 saying so (docs/api_contract.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from xml.etree import ElementTree

import httpx

from service.settings import DEFAULT_BUNDLE, Settings
from tests.support.page_service import served

KEY = "contract-key"
SEED = 4242
MAX_EXAMPLES = 12  # per operation and phase: well under a minute on two shared cores
SEEDED = 20
IMAGE_OPERATIONS = {
    f"POST /v1/search/image-to-{target}{form}" for target in ("text", "image") for form in ("", "/upload")
}
NOT_AN_IMAGE = "not a usable image: "
SCHEMA_VALID_REJECTED = "ST202"
RESPONSE = re.compile(r"^\[(\d{3})\] .*:\n\n\s+`(.*)`$", re.M)  # a failure's response: status line, then body


def _seed(base_url: str) -> None:
    words = ["red", "apple", "car", "tree", "bird", "house", "blue", "green"]
    items = [
        {"id": f"seed/txt{i}", "modality": "text", "text": f"{words[i % 8]} {words[(i * 3) % 8]}"}
        for i in range(SEEDED)
    ]
    response = httpx.post(f"{base_url}/v1/items:batch", json={"items": items}, headers={"X-API-Key": KEY})
    assert response.status_code == 200 and response.json()["stored"] == SEEDED, response.text


def _plain_run(base_url: str, reports: Path) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--continue-on-failure",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--header",
        f"X-API-Key: {KEY}",
        "--no-color",
        "--output-truncate",
        "false",
        "--report",
        "json,junit",
        "--report-dir",
        str(reports),
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=reports.parent, timeout=600)


def _failed_responses(junit: Path) -> dict[str, list[tuple[int, str]]]:
    """Each failing operation's failed responses, as (status, body), from the run's JUnit report."""
    failed: dict[str, list[tuple[int, str]]] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        for failure in case.iter("failure"):
            failed.setdefault(case.get("name"), []).extend((int(s), body) for s, body in RESPONSE.findall(failure.text))
    return failed


def test_a_plain_schemathesis_run_with_every_check_fails_only_on_bytes_that_are_no_image(
    redis_server, tmp_path: Path
) -> None:
    """On the plain redis-server only: it checks the OpenAPI document against the HTTP answers, whatever
    stores the items; test_fuzz_api sends its kind of requests to a service on the cluster too."""
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
    reports = tmp_path / "reports"
    with served(settings) as base_url:
        _seed(base_url)
        run = _plain_run(base_url, reports)
    output = run.stdout + run.stderr
    print(output[output.rfind("SUMMARY") :])  # shown with `pytest -s`: operations, phases, cases, failures
    [report_file] = reports.glob("json-*.json")
    report = json.loads(report_file.read_text())
    assert report["complete"] and report["errors"] == [], output[-20000:]
    assert report["operations"]["tested"] == 20  # every operation was reached
    assert report["test_cases"]["generated"] > 500
    for failure in report["failures"]:  # the one rule OpenAPI cannot state
        assert failure["code"] == SCHEMA_VALID_REJECTED and set(failure["operations"]) <= IMAGE_OPERATIONS, failure
    [junit] = reports.glob("junit-*.xml")
    failed = _failed_responses(junit)
    assert set(failed) == {operation for failure in report["failures"] for operation in failure["operations"]}
    assert all(failed.values()), failed  # each with the responses it failed on
    for operation, responses in failed.items():
        for status, body in responses:
            problem = json.loads(body)
            assert status == problem["status"] == 422 and problem["detail"].startswith(NOT_AN_IMAGE), (operation, body)
