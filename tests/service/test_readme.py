"""The README's example requests, parsed from README.md and run verbatim with curl (only the port differs)
against a started service whose first start ingested the (small) demo corpus."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from tests.support.page_service import small_demo, small_service  # noqa: F401 (fixtures)

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_requests() -> list[str]:
    """Every ``curl`` line of the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("curl ")]


def test_the_readme_shows_requests_for_text_image_similar_and_progress() -> None:
    paths = [re.search(r"localhost:8000(\S*)", line).group(1) for line in readme_requests()]
    assert paths == [
        "/v1/search/text-to-image",
        "/v1/search/image-to-text/upload",
        "/v1/search/similar",
        "/readyz",
    ]


def test_every_readme_request_answers_as_the_readme_says(small_service: str) -> None:  # noqa: F811
    assert shutil.which("curl")
    for line in readme_requests():
        command = shlex.split(line.replace("localhost:8000", small_service.removeprefix("http://")))
        done = subprocess.run([*command, "--fail-with-body"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        body = json.loads(done.stdout)
        if "/v1/search/" in line:
            assert len(body["results"]) == 5 if '"k": 5' in line else body["results"], (line, body)
        else:
            assert body["demo_corpus"]["state"] == "done" and body["redis"] == "ok"
