"""Shared fixtures. Synthetic data here is for unit tests only, never for reported results."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support.synthetic import make_synthetic_crossmodal

# A service started by a test (in process or as a child, which inherits this) starts empty unless the test
# asks for the demo corpus: its background ingestion would cost every test a minute of CPU.
os.environ["XMHASH_DEMO_CORPUS"] = "false"


@pytest.fixture
def synthetic() -> dict[str, np.ndarray]:
    return make_synthetic_crossmodal()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One real redis-server for the session; tests isolate themselves by index name."""
    from index.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One real Redis Cluster for the session (3 masters + 3 replicas on loopback); a new index on it gets
    one shard per master (``index.shards``)."""
    from tests.support.redis_cluster import RedisClusterServer

    cluster = RedisClusterServer(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=["redis", "cluster"])
def any_redis(request: pytest.FixtureRequest):
    """The plain redis-server (one shard, today's keys) and the cluster (three shards): the index and
    service tests that take this fixture run against both. Module-scoped, so a module's shared app or index
    (a module fixture) is made once per server; pytest runs a module's tests on one, then on the other."""
    return request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
