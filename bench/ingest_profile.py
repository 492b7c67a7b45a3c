"""Where a batch of the batch endpoint spends its time, stage by stage, in process (docs/ingestion.md).

    python -m bench.ingest_profile --batches 10 --modality text

One runtime as the service builds it (the default bundle, one ONNX thread) on a redis-server of its own
(AOF, ``appendfsync always``); batches of 1,000 feature items with a JSON body and with a msgpack body
(float32 bytes), bodies built beforehand. Each stage calls the functions the service runs, in the
service's order: body parse (``fast_json``), request model, item validation, feature conversion and
checks, the stored-modality lookup, ONNX encoding, bucket routing, the Redis script (fsync'd), the
in-process apply of the own write, and the response's serialisation. Medians over the batches after the
first, in ms per batch; then parse, ``ingest_batch`` (what the route calls) and the answer as a whole:
wall time, and CPU time of this process and of redis-server per batch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.ingest_bench import bodies
from index.redis_server import RedisServer
from index.store import Group
from service import ingest
from service.routes.fast_json import _decode
from service.runtime import Runtime
from service.schemas import BatchRequest, BatchResponse
from service.settings import DEFAULT_BUNDLE, Settings


def stages(runtime: Runtime, body: bytes, binary: bool) -> dict[str, float]:
    """One batch through the service's steps, each timed (seconds)."""
    times: dict[str, float] = {}

    def timed(name, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        times[name] = time.perf_counter() - started
        return result

    model = runtime.model
    parsed = timed("parse", _decode, body, "msgpack" if binary else None)
    request = timed("request_model", BatchRequest.model_validate, parsed)
    items = timed("validate", ingest._validated, request.items, ingest.BinaryItemIn if binary else ingest.ItemIn)
    vectors = timed("features", ingest._features, model.encoder, items)
    ids = [item.id for item in items]
    timed("stored_modalities", model.index.stored_modalities, ids)
    modality = items[0].modality
    codes = timed("encode_onnx", model.encoder.packed, modality, np.stack(vectors))
    index = model.index
    generation = index.generation
    buckets = timed("route", generation.centers.route, codes, 1)[:, 0]
    metadata = [json.dumps(item.metadata) for item in items]
    changes = timed("redis_script_fsync", generation.store.write, [Group(modality, ids, buckets, codes, metadata)])
    timed("apply_own", index._apply_own, generation, *changes)
    answer = {"stored": len(ids), "rejected": 0, "results": [{"id": i, "status": "stored"} for i in ids]}
    timed("response", lambda: BatchResponse.__pydantic_serializer__.to_json(BatchResponse.model_validate(answer)))
    return times


def _redis_cpu(server: RedisServer) -> float:
    cpu = server.client().info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def whole(runtime: Runtime, server: RedisServer, payloads: list[bytes], binary: bool) -> dict:
    """The path as the route runs it, per batch: wall time (median), and CPU time of this process (all
    its threads: the follower's too) and of redis-server, which a loaded machine distorts far less."""
    walls = []
    cpu, redis_cpu = time.process_time(), _redis_cpu(server)
    for number, body in enumerate(payloads):
        if number == 1:  # the first batch warms up
            cpu, redis_cpu = time.process_time(), _redis_cpu(server)
        started = time.perf_counter()
        items = BatchRequest.model_validate(_decode(body, "msgpack" if binary else None)).items
        BatchResponse.__pydantic_serializer__.to_json(ingest.ingest_batch(runtime, items, binary))
        walls.append(time.perf_counter() - started)
    batches = len(payloads) - 1
    return {
        "wall_ms_p50": round(1e3 * float(np.median(walls[1:])), 1),
        "cpu_ms": round(1e3 * (time.process_time() - cpu) / batches, 1),
        "redis_cpu_ms": round(1e3 * (_redis_cpu(server) - redis_cpu) / batches, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--modality", choices=["text", "image"], default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis").start()
        settings = Settings(redis_url=server.url, bundle_path=DEFAULT_BUNDLE, index_name=uuid.uuid4().hex,
                            api_key="profile", demo_corpus=False)  # fmt: skip
        runtime = Runtime.start(settings)
        try:
            dim = runtime.bundle.input_dim(args.modality)
            for binary in (False, True):
                name = "msgpack" if binary else "json"
                payloads = bodies(args.modality, dim, args.batches, binary, f"{name}-stages-")
                rows = [stages(runtime, body, binary) for body in payloads]
                median = {k: round(1e3 * float(np.median([r[k] for r in rows[1:]])), 2) for k in rows[0]}
                print(
                    f"{name} stages (ms per batch of 1,000):", json.dumps(median), "sum", round(sum(median.values()), 1)
                )
                payloads = bodies(args.modality, dim, args.batches, binary, f"{name}-whole-")
                print(f"{name} parse + ingest_batch + response:", json.dumps(whole(runtime, server, payloads, binary)))
        finally:
            runtime.stop()
            server.stop()


if __name__ == "__main__":
    main()
