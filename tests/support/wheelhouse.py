"""Wheels of the project's base dependency set, kept in var/ so that the image steps' ``pip install``
resolves from local files instead of downloading about 100 MB from the package index each run.

The set is pyproject.toml's ``[project].dependencies`` plus its build requirements (setuptools, for the
isolated build of the project), as ``pip wheel`` resolves them for the image's Python; a folder per
content of that set, so changing a dependency makes a new one. Made once per machine (about 15 s), into
a temporary folder renamed into place, so an interrupted run leaves nothing half made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

_DOWNLOAD_SECONDS = 600


def base_requirements(project: Path) -> list[str]:
    """What installing the project needs from an index: its base dependencies and build requirements."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    return [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]


def wheelhouse(project: Path, python: Path) -> Path:
    """The folder of wheels for ``project``'s base set on interpreter ``python`` (made when missing)."""
    requirements = base_requirements(project)
    tag = subprocess.run([str(python), "-c", "import sys, platform; print(sys.version_info[:2], platform.machine())"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    key = hashlib.sha256(json.dumps([requirements, tag]).encode()).hexdigest()[:16]
    folder = project / "var" / "image-wheels" / key
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=folder.parent))
    command = [sys.executable, "-m", "pip", "--python", str(python), "wheel", "-q", "-w", str(partial), *requirements]
    done = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_SECONDS)
    if done.returncode != 0:
        shutil.rmtree(partial)
        raise AssertionError(f"pip wheel of the base set failed:\n{done.stderr[-3000:]}")
    try:
        os.rename(partial, folder)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(partial)
    return folder


def offline(folder: Path) -> dict[str, str]:
    """pip's environment options that install from ``folder`` alone (the index is not asked)."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder)}
