"""The micro-batcher: each caller its own answer under concurrency and cancellation, batches bounded by
their size, a lone item's wait bounded by the window (read from the batcher's own wait observations)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future, wait

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.micro_batch import MicroBatcher


class Recorder:
    """A batch function that answers each item with its own transformation and records every batch."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[str]] = []
        self.waits: list[float] = []
        self.lock = threading.Lock()

    def run(self, items: list[str]) -> list[str]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        return [item[::-1] + f"/{len(item)}" for item in items]

    def observe(self, size: int, waits) -> None:
        with self.lock:
            self.waits.extend(waits)


# items of mixed lengths (as texts of 1 to 200 tokens); each drawn with whether its caller cancels
ITEMS = st.lists(st.tuples(st.text(min_size=1, max_size=200), st.booleans()), min_size=1, max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=ITEMS, max_size=st.integers(1, 9), threads=st.integers(1, 6), window=st.sampled_from([0.0, 0.002]))
def test_every_caller_gets_its_own_answer_under_concurrency_and_cancellation(
    items: list[tuple[str, bool]], max_size: int, threads: int, window: float
) -> None:
    recorder = Recorder(delay=0.001)
    batcher = MicroBatcher(recorder.run, window, max_size, "test", recorder.observe)
    futures: list[Future | None] = [None] * len(items)

    def caller(positions: range) -> None:
        for position in positions:
            item, cancel = items[position]
            futures[position] = batcher.submit(item)
            if cancel:
                futures[position].cancel()

    workers = [threading.Thread(target=caller, args=(range(t, len(items), threads),)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wait(futures, timeout=30)
    batcher.close()
    for (item, cancel), future in zip(items, futures, strict=True):
        if future.cancelled():
            assert cancel
            with pytest.raises(CancelledError):
                future.result()
        else:  # a cancel that came after its batch started leaves the answer in place
            assert future.result(timeout=0) == item[::-1] + f"/{len(item)}"
    run_items = [item for batch in recorder.batches for item in batch]
    answered = [item for (item, _), future in zip(items, futures, strict=True) if not future.cancelled()]
    assert sorted(run_items) == sorted(answered)  # a cancelled item never reaches the batch function
    assert all(1 <= len(batch) <= max_size for batch in recorder.batches)
    assert len(recorder.waits) == len(answered)


def test_concurrent_items_share_a_call() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.run, 0.2, 8, "test")
    futures = [batcher.submit(str(i)) for i in range(8)]
    assert [f.result(timeout=5) for f in futures] == [f"{i}/1" for i in range(8)]
    assert recorder.batches == [[str(i) for i in range(8)]]  # full before the window closed: one call
    batcher.close()


def test_a_lone_item_waits_no_longer_than_the_window() -> None:
    window = 0.05
    recorder = Recorder()
    batcher = MicroBatcher(recorder.run, window, 16, "test", recorder.observe)
    for _ in range(3):
        started = time.perf_counter()
        assert batcher.submit("lone").result(timeout=5) == "enol/4"
        assert time.perf_counter() - started < window + 0.5
    batcher.close()
    assert len(recorder.waits) == 3
    assert max(recorder.waits) <= window + 0.05  # generous for a loaded machine: the bound, not a speed


def test_a_failing_batch_reaches_each_caller_and_the_batcher_goes_on() -> None:
    calls = []

    def run(items: list[str]) -> list[str]:
        calls.append(items)
        if "bad" in items:
            raise ValueError("graph failed")
        return items

    batcher = MicroBatcher(run, 0.0, 4, "test")
    with pytest.raises(ValueError, match="graph failed"):
        batcher.submit("bad").result(timeout=5)
    assert batcher.submit("good").result(timeout=5) == "good"
    batcher.close()


def test_after_close_items_run_in_the_callers_thread() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(recorder.run, 0.0, 4, "test")
    batcher.close()
    assert batcher.submit("late").result(timeout=0) == "etal/4"
