"""A client of the fault tests: batches of both modalities given as feature vectors (``b{n}/{j}``), and a
thread sending batch after batch to a service (or a load balancer), recording which were acknowledged."""

from __future__ import annotations

import http.client
import threading
import time

import numpy as np

from tests.support.faults_service import KEY, call

DIMS = {"image": 1280, "text": 384}  # the default bundle's feature dimensions
BATCH = 16  # items per batch, half images and half texts


def batch_items(n: int) -> list[dict]:
    """Batch ``n``: items ``b{n}/{j}`` of both modalities given as feature vectors, metadata naming them."""
    rng = np.random.default_rng(n)
    items = []
    for j in range(BATCH):
        modality = "text" if j % 2 else "image"
        x = np.zeros(DIMS[modality])
        x[rng.choice(DIMS[modality], 6, replace=False)] = 1.0 if modality == "text" else rng.random(6)
        items.append({"id": f"b{n}/{j}", "modality": modality, "features": x.tolist(), "metadata": {"b": n, "j": j}})
    return items


class Stream(threading.Thread):
    """A client sending batch after batch (``b{first}``, ``b{first+1}``, …) until stopped; a batch is
    acknowledged when the service answered 200 with every item stored."""

    def __init__(self, port: int, first: int = 0) -> None:
        super().__init__(daemon=True)
        self.port, self.next = port, first
        self.acked: list[int] = []
        self.failed: dict[int, str] = {}  # batch → what happened instead
        self.in_flight = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            n, self.next = self.next, self.next + 1
            items = batch_items(n)
            self.in_flight.set()
            try:
                reply = call(self.port, "POST", "/v1/items:batch", {"items": items}, key=KEY, timeout=30)
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, cut short
                self.failed[n] = type(exc).__name__
                time.sleep(0.05)
            else:
                if reply.status == 200 and reply.body["stored"] == BATCH:
                    self.acked.append(n)
                else:
                    self.failed[n] = f"{reply.status} {reply.body}"
                    time.sleep(0.05)
            finally:
                self.in_flight.clear()

    def wait_acked(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} batches acknowledged; failed: {self.failed}"
            time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
