"""The compose files: valid for docker-compose; the main one runs a durable Redis and exposes nothing that
should not be."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.compose import REQUIRED, compose_files, config, run_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
HA_COMPOSE = ROOT / "deploy" / "ha" / "docker-compose.yml"


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


def test_the_ha_compose_file_has_no_single_point_of_failure_but_the_balancer() -> None:
    """deploy/ha: 1 primary + 2 replicas on the durable config, 3 sentinels, 2 service replicas following
    them with WAIT 1, HAProxy in front and alone published (docs/ha.md). The same files run as processes in
    tests/deploy/test_ha_failover.py."""
    services = config(HA_COMPOSE)["services"]
    nodes = [services[f"redis-{n}"] for n in (1, 2, 3)]
    assert all("/etc/xmhash/redis.conf" in " ".join(node["command"]) for node in nodes)
    assert [("--replicaof redis-1 6379" in " ".join(node["command"])) for node in nodes] == [False, True, True]
    sentinels = [services[f"sentinel-{n}"]["command"] for n in (1, 2, 3)]
    assert all(command[-5:] == ["26379", "redis-1", "6379", "/data", "2000"] for command in sentinels)
    replicas = [name for name in services if name.startswith("service-")]
    assert len(replicas) >= 2
    for name in replicas:
        environment = services[name]["environment"]
        assert environment["XMHASH_REDIS_SENTINELS"] == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"
        assert environment["XMHASH_REDIS_WAIT_REPLICAS"] == "1" and "REDIS_URL" not in environment
    balancer = services["haproxy"]
    assert {balancer["environment"][f"XMHASH_SERVICE_{n}"] for n in (1, 2)} == {"service-1:8000", "service-2:8000"}
    assert [name for name, service in services.items() if "ports" in service] == ["haproxy"]
