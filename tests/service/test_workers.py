"""Several worker processes (``XMHASH_WORKERS``) serve one index as if they were one.

Each worker holds the index in memory; a client cannot choose the worker that answers it (the kernel
hands each new connection to one of them), so every behaviour here is checked on fresh connections
until every worker has answered.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from index.redis_server import RedisServer
from tests.support.faults_bundles import models_dir
from tests.support.faults_service import KEY, Reply, Service
from tests.support.page_service import small_demo  # noqa: F401 (a fixture)

WORKERS = 2
DEADLINE = 10.0  # seconds within which every worker must agree (a liveness bound, not a speed target)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Two workers on a redis-server of their own, then on the session's Redis Cluster (three shards)."""
    root = tmp_path_factory.mktemp("workers")
    models = models_dir(root)
    server = RedisServer(root / "redis").start() if request.param == "redis" else None
    url = server.url if server else request.getfixturevalue("redis_cluster").url
    env = {
        "XMHASH_WORKERS": str(WORKERS),
        "XMHASH_MODELS_DIR": str(models),
        "XMHASH_BUNDLE_PATH": str(models / "default"),
        "XMHASH_REFRESH_SECONDS": "0.5",
    }
    service = Service(url, root, index_name=f"workers-{uuid.uuid4().hex}", env=env).start()
    yield service
    service.stop()
    if server:
        server.stop()


def every_worker(service: Service, path: str, agree, deadline: float = DEADLINE) -> dict[int, Reply]:
    """GET ``path`` on fresh connections until every worker (by the pid /v1/models reports) has given a
    reply satisfying ``agree``; returns each worker's last reply."""
    latest: dict[int, Reply] = {}
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        reply = service.call("GET", path)
        latest[reply.body["worker"]] = reply
        if len(latest) == WORKERS and all(agree(r) for r in latest.values()):
            return latest
    raise AssertionError(f"workers did not agree within {deadline} s: {[r.body for r in latest.values()]}")


def features(modality: str, n: int, seed: int) -> list[list[float]]:
    dims = {"image": 1280, "text": 384}[modality]
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, dims))
    for row in rows:
        row[rng.choice(dims, 6, replace=False)] = 1.0
    return rows.tolist()


def items_of(reply: Reply) -> dict[str, int]:
    return reply.body["index"]["items"]


def test_a_write_acknowledged_by_one_worker_is_searchable_on_every_worker(service: Service) -> None:
    before = items_of(service.call("GET", "/v1/models"))
    items = [
        {"id": f"w/{modality}/{i}", "modality": modality, "features": x, "metadata": {"i": i}}
        for modality in ("image", "text")
        for i, x in enumerate(features(modality, 20, seed=len(modality)))
    ]
    assert service.call("POST", "/v1/items:batch", {"items": items}, key=KEY).status == 200
    wanted = {m: before[m] + 20 for m in before}
    every_worker(service, "/v1/models", lambda r: items_of(r) == wanted)

    query = {"features": features("text", 1, seed=99)[0], "k": 40, "probe": "all"}
    answers = {
        str(service.call("POST", "/v1/search/text-to-image", query).body["results"]) for _ in range(20)
    }  # 20 fresh connections, spread over the workers
    assert len(answers) == 1


def test_a_swap_through_one_worker_is_followed_by_every_worker(service: Service) -> None:
    default = service.call("GET", "/v1/models").body["bundle_id"]
    swapped = service.call("POST", "/v1/models:swap", {"bundle": "linear32", "force": True}, key=KEY, timeout=120)
    assert swapped.status == 200
    new = swapped.body["bundle_id"]
    assert new != default
    every_worker(service, "/v1/models", lambda r: r.body["bundle_id"] == new and r.body["code_bits"] == 32)
    assert service.call("POST", "/v1/models:swap", {"bundle": "default"}, key=KEY, timeout=120).status == 200
    every_worker(service, "/v1/models", lambda r: r.body["bundle_id"] == default)


def requests_counted(service: Service, route: str) -> float:
    text = service.call("GET", "/metrics").body
    pattern = rf'^xmhash_request_seconds_count\{{method="GET",route="{re.escape(route)}",status="200"\}} (\S+)$'
    return sum(float(count) for count in re.findall(pattern, text, re.M))


def test_metrics_count_the_requests_of_every_worker(service: Service) -> None:
    before = requests_counted(service, "/v1/models")
    answered = {service.call("GET", "/v1/models").body["worker"] for _ in range(30)}
    assert len(answered) == WORKERS  # the 30 requests were split between the workers
    assert requests_counted(service, "/v1/models") - before == 30


def test_hash_health_is_one_series_and_tie_groups_count_the_searches_of_every_worker(service: Service) -> None:
    """Every worker holds the same items, so a hash-health gauge is one series (the value the last worker
    scraped set); tie groups are per query, so their histogram sums the searches every worker answered."""
    same = features("image", 1, seed=7)[0]
    items = [{"id": f"h/{i}", "modality": "image", "features": same} for i in range(5)]
    before = items_of(service.call("GET", "/v1/models"))["image"]
    assert service.call("POST", "/v1/items:batch", {"items": items}, key=KEY).status == 200
    every_worker(service, "/v1/models", lambda r: items_of(r)["image"] >= before + 5)
    pattern = r'^xmhash_search_tie_group_size_count\{target="image"\} (\S+)$'
    counted = sum(float(n) for n in re.findall(pattern, service.call("GET", "/metrics").body, re.M))
    query = {"features": same, "k": 5, "probe": "all"}
    assert all(service.call("POST", "/v1/search/image-to-image", query).status == 200 for _ in range(30))
    text = service.call("GET", "/metrics").body
    assert sum(float(n) for n in re.findall(pattern, text, re.M)) - counted == 30
    distinct = re.findall(r'^xmhash_hash_distinct_codes_ratio\{modality="image"\} (\S+)$', text, re.M)
    assert len(distinct) == 1 and 0 < float(distinct[0]) < 1  # five items share one code


def test_the_demo_corpus_is_ingested_by_one_worker_only(tmp_path: Path, small_demo: Path) -> None:  # noqa: F811
    """Each worker runs the start-up code; the demo ingestion is claimed by the first."""
    server = RedisServer(tmp_path / "redis").start()
    env = {"XMHASH_WORKERS": "2", "XMHASH_DEMO_CORPUS": "true", "XMHASH_DEMO_COLLECTION": str(small_demo)}
    demo = Service(server.url, tmp_path, index_name="demo", api_key=None, env=env, args=("--demo",))
    try:
        demo.start()
        every_worker(demo, "/v1/models", lambda r: min(items_of(r).values()) > 0, deadline=300)
        assert len(re.findall(r"demo: worker \d+ loads the demo collection", demo.output())) == 1
    finally:
        demo.stop()
        server.stop()
