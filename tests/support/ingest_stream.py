"""A writer process for the durability tests: adds batches forever, printing each acknowledged batch.

``python -m tests.support.ingest_stream REDIS_URL INDEX_NAME [REPLICAS]`` — a line ``ack <first> <last>`` is
printed (and flushed) only after ``HashIndex.add`` has returned for items ``<first>..<last>``; on a sharded
index a batch some shards refused prints ``stored <id> …`` for the ids the others acknowledged, and the
writer goes on with the next batch (``REPLICAS``: each write waits for that many replicas, ``WAIT``).
"""

from __future__ import annotations

import sys

import numpy as np

from index.code_space import CodeSpace
from index.codes import pack_signs, to_signs
from index.engine import HashIndex, Item
from index.errors import PartialWriteError, StoreUnavailableError
from index.redis_connection import RedisTarget, connect

BITS = 32
BATCH = 50


def centers() -> np.ndarray:
    return to_signs(np.random.default_rng(0).normal(size=(16, BITS)))


def code(i: int) -> np.ndarray:
    return pack_signs(to_signs(np.random.default_rng(i).normal(size=(1, BITS))))[0]


def main(url: str, name: str, replicas: int = 0) -> None:
    client = connect(RedisTarget(url, wait_replicas=replicas))
    index = HashIndex.open(client, name, CodeSpace("stream", BITS, centers(), "v1"))
    start = 0
    while True:
        try:
            index.add([Item(f"item{i}", "image", code(i), {"i": i}) for i in range(start, start + BATCH)])
            print(f"ack {start} {start + BATCH - 1}", flush=True)
        except PartialWriteError as exc:
            print("stored", *exc.stored, flush=True)
        except StoreUnavailableError as exc:
            if replicas == 0:
                raise
            print(f"failed {start} {start + BATCH - 1} {exc}".replace("\n", " "), flush=True)
        start += BATCH


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(arg) for arg in sys.argv[3:]))
