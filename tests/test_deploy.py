"""The compose files: valid for docker-compose; the main one runs a durable Redis and exposes nothing that
should not be."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.compose import REQUIRED, compose_files, config, run_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.mark.parametrize("path", compose_files(ROOT), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_compose_file_is_valid_for_docker_compose(path: Path) -> None:
    assert config(path)["services"]


def test_compose_file_is_valid_and_redis_is_durable_and_private() -> None:
    services = config(COMPOSE)["services"]
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert "ports" not in redis  # Redis is reachable only on the compose network
    assert any(v.startswith("redis-data:/data") for v in redis["volumes"])
    service = services["service"]
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert int(service["environment"]["XMHASH_WORKERS"]) >= 2
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in service and "healthcheck" in redis


def test_compose_refuses_to_start_without_an_api_key() -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "XMHASH_API_KEY"}
    result = run_config(COMPOSE, env)
    assert result.returncode != 0 and "XMHASH_API_KEY" in result.stderr
