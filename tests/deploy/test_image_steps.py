"""The container image starts and answers: deploy/Dockerfile's final stage performed on this machine,
step by step as the file writes them (tests/support/image_steps.py), with no container runtime.

A fresh virtual environment gets the project installed as the image installs it (``pip install`` of a
copy of the build context, not editable: the scan kernel compiled into site-packages), the files land
where the image's COPY lines put them, and the image's CMD starts in its WORKDIR with its ENV, as its
USER when the test runs as root (so a path that user cannot read or write fails here as in the image).
It gets the environment docker-compose.yml gives it (two worker processes, an API key), but a private
redis-server on loopback for the compose file's Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from index.redis_server import RedisServer, free_port
from tests.support import image_scenario, image_steps
from tests.support.compose import service_environment

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
STOP_SECONDS = 10


@dataclass
class Started:
    url: str
    api_key: str


@pytest.fixture(scope="module")
def image() -> Iterator[image_steps.Image]:
    root = Path(tempfile.mkdtemp(prefix="xmhash-image-"))
    root.chmod(0o755)  # as an image's /: every user may reach what the steps put there
    try:
        built = image_steps.build(DOCKERFILE, ROOT, root)
        yield built
        size = subprocess.run(["du", "-sh", str(built.venv)], capture_output=True, text=True).stdout.split()[0]
        print(f"\nimage steps: {json.dumps(built.timings, indent=1)}\nserving environment: {size}")
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def service(image: image_steps.Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    redis = RedisServer(tmp_path_factory.mktemp("image-redis")).start()
    port = free_port()
    overrides = {
        **service_environment(ROOT / "docker-compose.yml", "service"),  # its workers, its API key
        "REDIS_URL": redis.url,
        "XMHASH_HOST": "127.0.0.1",  # the image binds every interface of its container; here, loopback only
        "XMHASH_PORT": str(port),
    }
    log = image.root / "service.log"
    process = image.start(overrides, log)
    try:
        url = f"http://127.0.0.1:{port}"

        def exited() -> str | None:
            return None if process.poll() is None else f"the service exited:\n{log.read_text()[-4000:]}"

        image.timings["start_to_readyz_200_s"] = round(image_scenario.wait_until_ready(url, exited), 2)
        yield Started(url, overrides["XMHASH_API_KEY"])
    finally:
        _stop(process)
        redis.stop()


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the service's own session (uvicorn and any workers), as ``docker stop`` sends it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _python(image: image_steps.Image, code: str) -> str:
    """What ``python -c code`` prints in the image: its working directory, ENV and user."""
    done = image.run(["python", "-c", code], {})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_image_runs_as_an_unprivileged_user(image: image_steps.Image) -> None:
    assert image.user not in ("root", "0")


def test_the_serving_environment_has_the_base_dependencies_only(image: image_steps.Image) -> None:
    code = "import importlib.util as u; print([m for m in ('torch', 'sklearn', 'training') if u.find_spec(m)])"
    assert _python(image, code) == "[]"


def test_the_service_runs_from_the_installed_package_with_its_compiled_kernel(image: image_steps.Image) -> None:
    """A source tree in the working directory would shadow the installed package (and its kernel)."""
    where = _python(image, "import index._hamming, service; print(index.__file__); print(service.__file__)")
    site_packages = image.venv / "lib"
    assert all(Path(path).is_relative_to(site_packages) for path in where.splitlines()), where


def test_the_settings_find_the_bundle_verified_whole_and_the_folder_a_swap_loads_from(image: image_steps.Image) -> None:
    """load_bundle checks every file of the manifest by sha256, the featurizer graphs the builder made included."""
    code = "from index.bundle import load_bundle; from service.settings import Settings; s = Settings(); "
    code += "print(load_bundle(s.bundle_path).bundle_id, s.bundle_path.parent == s.models_dir)"
    manifest = json.loads((ROOT / "models" / "default" / "manifest.json").read_text())
    assert _python(image, code) == f"{manifest['bundle_id']} True"


def test_the_started_image_answers_a_batch_write_a_text_query_and_an_image_upload(service: Started) -> None:
    image_scenario.answers_a_batch_write_a_text_query_and_an_image_upload(service.url, service.api_key)
