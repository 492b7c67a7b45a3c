"""Dynamic micro-batching: calls that arrive close together are run as one call of a batch function.

A raw query pays the featurizer's fixed cost per graph run (hundreds of small operators for MiniLM), so
concurrent queries featurized one by one pay it again and again. A :class:`MicroBatcher` owns one thread
that takes the first waiting item, gathers what else arrives within ``window`` seconds (or until
``max_size`` items), runs the batch function once on all of them, and hands each caller its own row. A
lone item waits at most ``window``; under load, items that arrive while a batch runs form the next one at
once (their window has passed). Callers in any thread submit and get a ``concurrent.futures.Future``
(an ``async`` route awaits it through ``asyncio.wrap_future``); a caller that gives up cancels its future,
and its item is left out of the batch if it has not started.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
Observer = Callable[[int, Sequence[float]], object]  # told each batch's size and its items' queue waits (s)
_STOP = object()


class MicroBatcher(Generic[Item, Result]):
    """Runs ``run(items) → results`` (one result per item, in order) on batches of submitted items."""

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result]],
        window: float,
        max_size: int,
        name: str,
        observe: Observer | None = None,
    ) -> None:
        self.run = run
        self.window = window
        self.max_size = max_size
        self.observe = observe
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"micro-batch-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> Future[Result]:
        """The future of ``item``'s result; after :meth:`close`, run at once in the caller's thread."""
        future: Future[Result] = Future()
        if self._closed:
            if future.set_running_or_notify_cancel():
                settle([future], lambda: self.run([item]))
            return future
        self._queue.put((item, future, time.perf_counter()))
        return future

    def close(self) -> None:
        """Stop the thread once the items already submitted are answered."""
        self._closed = True
        self._queue.put(_STOP)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            self._run(batch)
            if stop:
                return

    def _gather(self, first: tuple) -> tuple[list[tuple], bool]:
        """The first item and what arrives until its window closes or the batch is full; and whether the
        stop mark came meanwhile."""
        batch, deadline = [first], first[2] + self.window
        while len(batch) < self.max_size:
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
        return batch, False

    def _run(self, batch: list[tuple]) -> None:
        started = time.perf_counter()
        live = [(item, future, queued) for item, future, queued in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        if self.observe is not None:
            self.observe(len(live), [started - queued for _, _, queued in live])
        settle([future for _, future, _ in live], lambda: self.run([item for item, _, _ in live]))


def settle(futures: Sequence[Future | asyncio.Future], compute: Callable[[], Sequence]) -> None:
    """Each future (a thread's or an event loop's) its own result, or every one the exception that
    ``compute`` raised."""
    try:
        results = compute()
        if len(results) != len(futures):
            raise RuntimeError(f"a batch of {len(futures)} items gave {len(results)} results")
    except Exception as exc:  # handed to the callers, whose requests report it; the thread lives on
        for future in futures:
            future.set_exception(exc)
        return
    for future, result in zip(futures, results, strict=True):
        future.set_result(result)
