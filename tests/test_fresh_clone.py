"""A clone of the repository, alone in an empty folder, passes the tests that read benchmark data.

The tests marked ``shipped_data`` read the files the project ships under ``data/``; run inside a bare
clone (no sibling ``shared/`` folder, no ``var/``), they prove that no test depends on a folder that
exists beside this checkout but not beside anyone else's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_data_dependent_tests_pass_in_a_clone_with_no_sibling_folders(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git checkout: this test clones it")
    clone = tmp_path / "empty" / "xmhash"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["xmhash"]  # nothing beside the clone
    assert not (clone / "var").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    # The clone's own packages come first on sys.path (the interpreter is this checkout's .venv).
    env["PYTHONPATH"] = str(clone)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "shipped_data", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=clone, env=env, capture_output=True, text=True,
    )  # fmt: skip
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and " failed" not in result.stdout, tail
    shutil.rmtree(clone)
