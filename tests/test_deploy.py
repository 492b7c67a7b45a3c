"""The compose file: valid for docker-compose, durable Redis, nothing exposed that should not be."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    assert shutil.which("docker-compose"), "docker-compose missing: `make bootstrap` installs the Debian package"
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        env=os.environ | {"XMHASH_API_KEY": "test"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_redis_is_durable_and_private() -> None:
    config = _config()
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert "ports" not in redis  # Redis is reachable only on the compose network
    assert any(v.startswith("redis-data:/data") for v in redis["volumes"])
    service = config["services"]["service"]
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert int(service["environment"]["XMHASH_WORKERS"]) >= 2
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in service and "healthcheck" in redis


def test_compose_refuses_to_start_without_an_api_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XMHASH_API_KEY"}
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "XMHASH_API_KEY" in result.stderr
