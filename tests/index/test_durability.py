"""Acknowledged writes survive SIGKILL of the writer and of Redis itself (AOF, appendfsync always)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from index.code_space import CodeSpace
from index.engine import HashIndex
from index.redis_server import RedisServer
from tests.support.ingest_stream import BITS, centers, code

ROOT = Path(__file__).resolve().parents[2]


def test_every_acknowledged_insert_survives_sigkill_of_writer_and_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ingest_stream", server.url, "durable"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        acknowledged = -1
        for line in writer.stdout:
            acknowledged = int(line.split()[2])
            if acknowledged >= 2_000:
                break
        os.kill(writer.pid, signal.SIGKILL)  # mid-stream: the next batch may be in flight
        writer.wait()
        os.kill(server.process.pid, signal.SIGKILL)  # and Redis dies without a clean shutdown
        server.process.wait()
        server.start()  # same directory, same port: Redis replays its AOF

        index = HashIndex.open(server.client(), "durable", CodeSpace("stream", BITS, centers(), "v1"))
        stored = index.stats()["items"]["image"]
        assert stored >= acknowledged + 1  # an in-flight batch may also have landed, whole
        assert stored % 50 == 0  # batches land whole or not at all
        queries = np.stack([code(i) for i in range(acknowledged + 1)])
        results = index.search("image", queries, k=10)
        for i, row in enumerate(results):  # every acknowledged item is found by its own code
            assert any(h.id == f"item{i}" and h.distance == 0 and h.metadata == {"i": i} for h in row)
        counts = index.store.counts("image")
        members = index.sides["image"].scan.bucket_sizes()
        assert all(counts.get(b, 0) == members[b] for b in range(len(members)))
        assert np.sum(members) == stored
    finally:
        server.stop()
