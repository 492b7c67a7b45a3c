"""The image built and run for real where podman is installed: deploy/Dockerfile built by podman, the
container started as the image's USER with docker-compose.yml's environment, answering as
tests/deploy/test_image_steps.py's emulated image does.

The featurizers stage is not built: it installs torch from the PyTorch wheel index, which the machines
here cannot reach. Its output is supplied instead (``--build-context featurizers=…``): the checkout's
graphs, which deploy/bootstrap.sh made with the stage's own command and the bundle's sha256 list checks.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from index.redis_server import RedisServer, free_port
from tests.support import image_scenario
from tests.support.compose import service_environment
from tests.support.dockerfile import Stage, parse, parse_copy, stage_named
from tests.support.podman import Podman, ensure_base, podman

pytestmark = pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
TAG = "localhost/xmhash:image-test"
BUILD_SECONDS = 1800


def _builder_outputs(stages: list[Stage], folder: Path) -> Path:
    """A build context standing for the featurizers stage: the checkout's files at the paths the final
    stage copies from it."""
    workdir = stage_named(stages, "featurizers").workdir().rstrip("/") + "/"
    copies = [parse_copy(i) for i in stages[-1].all("COPY")]
    for source in (s for copy in copies if copy.stage == "featurizers" for s in copy.sources):
        shutil.copytree(ROOT / source.removeprefix(workdir), folder / source.lstrip("/"), dirs_exist_ok=True)
    return folder


def _logs(run: Podman, name: str) -> str:
    done = run("logs", name, timeout=30)
    return f"the container stopped:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Podman, dict]]:
    scratch = tmp_path_factory.mktemp("podman")
    run = podman(scratch)
    stages = parse(DOCKERFILE)
    facts: dict = {"base_image": ensure_base(run, stages[-1].base, scratch)}
    outputs = _builder_outputs(stages, scratch / "featurizers")
    started = time.perf_counter()
    run.ok("build", "-f", str(DOCKERFILE), "--build-context", f"featurizers={outputs}", "-t", TAG, str(ROOT),
           timeout=BUILD_SECONDS)  # fmt: skip
    facts["build_s"] = round(time.perf_counter() - started, 1)
    facts["image_bytes"] = int(run.ok("image", "inspect", TAG, "--format", "{{.Size}}", timeout=30))
    try:
        yield run, facts
        print(f"\npodman: {json.dumps(facts)}")
    finally:
        run("rmi", TAG, timeout=120)


def test_the_built_image_runs_as_its_user_from_the_installed_package_and_answers(
    built: tuple[Podman, dict], tmp_path_factory: pytest.TempPathFactory
) -> None:
    run, facts = built
    redis = RedisServer(tmp_path_factory.mktemp("podman-redis")).start()
    port, name = free_port(), f"xmhash-image-test-{uuid.uuid4().hex[:8]}"
    env = service_environment(ROOT / "docker-compose.yml", "service")
    env |= {"REDIS_URL": redis.url, "XMHASH_HOST": "127.0.0.1", "XMHASH_PORT": str(port)}  # host network: loopback
    try:
        started = time.perf_counter()
        run.ok("run", "-d", "--name", name, "--network", "host", *[f"--env={k}={v}" for k, v in env.items()], TAG,
               timeout=120)  # fmt: skip

        def stopped() -> str | None:
            state = run("inspect", name, "--format", "{{.State.Running}}", timeout=30).stdout.strip()
            return None if state == "true" else _logs(run, name)

        image_scenario.wait_until_ready(f"http://127.0.0.1:{port}", stopped)
        facts["run_to_readyz_200_s"] = round(time.perf_counter() - started, 2)
        image_scenario.answers_a_batch_write_a_text_query_and_an_image_upload(
            f"http://127.0.0.1:{port}", env["XMHASH_API_KEY"]
        )
        code = "import os, index._hamming; print(os.getuid(), index.__file__)"
        uid, where = run.ok("exec", name, "python", "-c", code, timeout=60).split()
        assert uid != "0" and "/site-packages/index/" in where
    finally:
        run("rm", "-f", name, timeout=60)
        redis.stop()
