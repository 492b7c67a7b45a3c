"""A real browser renders the docs page with the network off (a namespace holding only loopback)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"


def test_swagger_ui_renders_every_operation_without_network(tmp_path: Path) -> None:
    assert shutil.which("chromium"), "chromium missing: `make bootstrap` installs the Debian package"
    assert shutil.which("unshare"), "unshare (util-linux) missing"
    script = ROOT / "tests" / "support" / "browser" / "docs_offline.sh"
    command = ["unshare", "--net", "bash", str(script), str(tmp_path), sys.executable]
    subprocess.run(command, cwd=ROOT, check=True, timeout=240)
    dom = (tmp_path / "docs.html").read_text()
    for path in ("/v1/search/text-to-image", "/v1/search/image-to-text", "/v1/items:batch", "/v1/models"):
        assert f'data-path="{path}"' in dom, f"operation {path} not rendered"
    assert dom.count('class="opblock opblock-') >= 10
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "docs.png", ARTIFACTS / "docs.png")
    assert (ARTIFACTS / "docs.png").stat().st_size > 20_000
