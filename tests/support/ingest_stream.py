"""A writer process for the durability tests: adds batches forever, printing each acknowledged batch.

``python -m tests.support.ingest_stream REDIS_URL INDEX_NAME`` — a line ``ack <first> <last>`` is printed (and
flushed) only after ``HashIndex.add`` has returned for items ``<first>..<last>``.
"""

from __future__ import annotations

import sys

import numpy as np
import redis

from index.code_space import CodeSpace
from index.codes import pack_signs, to_signs
from index.engine import HashIndex, Item

BITS = 32
BATCH = 50


def centers() -> np.ndarray:
    return to_signs(np.random.default_rng(0).normal(size=(16, BITS)))


def code(i: int) -> np.ndarray:
    return pack_signs(to_signs(np.random.default_rng(i).normal(size=(1, BITS))))[0]


def main(url: str, name: str) -> None:
    index = HashIndex.open(redis.Redis.from_url(url), name, CodeSpace("stream", BITS, centers(), "v1"))
    start = 0
    while True:
        index.add([Item(f"item{i}", "image", code(i), {"i": i}) for i in range(start, start + BATCH)])
        print(f"ack {start} {start + BATCH - 1}", flush=True)
        start += BATCH


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
