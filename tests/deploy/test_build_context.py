"""What ``docker build`` sends: the sources the Dockerfile copies, never a host's build outputs,
environments, run data or caches (.dockerignore)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.build_context import _regex, excluded, read_patterns
from tests.support.dockerfile import parse, parse_copy

ROOT = Path(__file__).resolve().parents[2]


def test_docker_matching_keeps_star_inside_a_folder_and_lets_double_star_span_folders() -> None:
    assert excluded("a.so", [_regex("*.so")]) and not excluded("index/a.so", [_regex("*.so")])
    assert excluded("index/a.so", [_regex("**/*.so")]) and excluded("a.so", [_regex("**/*.so")])
    assert excluded(".venv/lib/site.py", [_regex(".venv")])  # a folder takes its contents with it


def test_the_context_leaves_out_build_outputs_environments_data_caches_and_the_featurizer_graphs() -> None:
    patterns = read_patterns(ROOT)
    for path in [
        "index/_hamming.cpython-311-x86_64-linux-gnu.so",  # an in-place kernel would hide a broken install
        ".venv/bin/python",
        "var/service/redis/appendonly.aof",
        ".git/HEAD",
        "build/lib.linux-x86_64-cpython-311/index/scan.py",
        "service/routes/__pycache__/items.cpython-311.pyc",
        "xmhash.egg-info/PKG-INFO",
        ".pytest_cache/README.md",
        "models/default/featurizer_efficientnet_lite0.onnx",  # the featurizers stage builds them
    ]:
        assert excluded(path, patterns), path


def test_every_tracked_file_the_copy_lines_name_reaches_the_build() -> None:
    patterns = read_patterns(ROOT)
    copies = [parse_copy(i) for stage in parse(ROOT / "deploy" / "Dockerfile") for i in stage.all("COPY")]
    sources = sorted({source for copy in copies if copy.stage is None for source in copy.sources})
    tracked = subprocess.run(["git", "ls-files", "--", *sources], cwd=ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.split()
    assert files and not [path for path in files if excluded(path, patterns)]
