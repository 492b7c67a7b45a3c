"""Compose files read as docker-compose reads them (``docker-compose -f FILE config``): validated, with
variables interpolated, defaults filled in. Every compose file of the repository is found here, so a
new one (say under deploy/) is validated without a test of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

# The variables a compose file may require (``${NAME:?…}``): set to a stand-in for the check.
REQUIRED = {"XMHASH_API_KEY": "test"}


def compose_files(root: Path) -> list[Path]:
    """The compose files at the top of the checkout and anywhere under deploy/."""
    found = {*root.glob("*compose*.y*ml"), *(root / "deploy").rglob("*compose*.y*ml")}
    return sorted(found)


def run_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker-compose config`` of ``path`` under exactly ``env`` (plus PATH), whatever its status."""
    assert shutil.which("docker-compose"), "docker-compose missing: `make bootstrap` installs the Debian package"
    return subprocess.run(["docker-compose", "-f", str(path), "config"], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True)  # fmt: skip


def config(path: Path) -> dict:
    """The configuration docker-compose makes of ``path`` with the required variables set."""
    result = run_config(path, REQUIRED)
    assert result.returncode == 0, f"{path}: {result.stderr}"
    return yaml.safe_load(result.stdout)


def service_environment(path: Path, service: str) -> dict[str, str]:
    """The environment ``path`` gives ``service`` (the required variables at their stand-ins)."""
    return {name: str(value) for name, value in config(path)["services"][service]["environment"].items()}
