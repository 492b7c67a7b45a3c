"""Where a batch of the batch endpoint spends its time, stage by stage, in process (docs/ingestion.md).

    python -m bench.ingest_profile --batches 10 --modality text

One runtime as the service builds it (the default bundle, one ONNX thread) on a redis-server of its own
(AOF, ``appendfsync always``); batches of 1,000 feature items with a JSON body and with a msgpack body
(float32 bytes), bodies built beforehand. Each stage calls the functions the service runs, in the
service's order: body parse (``fast_json``), request model, item validation, feature conversion and
checks, the stored-modality lookup, ONNX encoding, bucket routing, the Redis script (fsync'd), the
in-process apply of the own write, and the response's serialisation. Medians over the batches after the
first, in ms per batch; then ``ingest_batch`` as a whole (what the route calls) for the same bodies.
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
    change = timed("redis_script_fsync", generation.store.write, [Group(modality, ids, buckets, codes, metadata)])
    timed("apply_own", index._apply_own, generation, change)
    answer = {"stored": len(ids), "rejected": 0, "results": [{"id": i, "status": "stored"} for i in ids]}
    timed("response", lambda: BatchResponse.__pydantic_serializer__.to_json(BatchResponse.model_validate(answer)))
    return times


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
                whole = []
                for body in payloads:
                    started = time.perf_counter()
                    items = BatchRequest.model_validate(_decode(body, "msgpack" if binary else None)).items
                    BatchResponse.__pydantic_serializer__.to_json(ingest.ingest_batch(runtime, items, binary))
                    whole.append(time.perf_counter() - started)
                ms = 1e3 * float(np.median(whole[1:]))
                print(f"{name} parse + ingest_batch + response: {ms:.1f} ms per batch, {1000 / ms * 1e3:.0f} items/s")
        finally:
            runtime.stop()
            server.stop()


if __name__ == "__main__":
    main()
