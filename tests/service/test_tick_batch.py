"""The event-loop batcher: the items of one loop turn run as one call (at most its size), each caller gets
its own result, a cancelled item is left out, a failure reaches every caller of its call."""

from __future__ import annotations

import asyncio

import pytest

from service.tick_batch import TickBatcher


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail

    def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.fail:
            raise ValueError("the batch failed")
        return [item * 10 for item in items]


def test_the_items_of_one_turn_run_as_one_call_each_with_its_own_result() -> None:
    recorder = Recorder()
    batcher = TickBatcher(recorder.run, max_size=4)

    async def scenario() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))

    assert asyncio.run(scenario()) == [i * 10 for i in range(10)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_concurrent_callers_resumed_in_one_turn_share_a_call() -> None:
    """Requests whose awaits end in the same turn (as queries whose features came back together) submit
    in that turn and share one run; a lone item runs in the next turn, waiting for nothing."""
    recorder = Recorder()
    batcher = TickBatcher(recorder.run, max_size=16)

    async def caller(i: int, ready: asyncio.Event) -> int:
        await ready.wait()
        return await batcher.submit(i)

    async def scenario() -> list[int]:
        ready = asyncio.Event()
        callers = [asyncio.create_task(caller(i, ready)) for i in range(6)]
        await asyncio.sleep(0)
        ready.set()
        together = list(await asyncio.gather(*callers))
        alone = await batcher.submit(99)
        return [*together, alone]

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50, 990]
    assert recorder.batches == [[0, 1, 2, 3, 4, 5], [99]]


def test_a_cancelled_item_is_left_out_and_a_failure_reaches_every_caller() -> None:
    recorder = Recorder()
    batcher = TickBatcher(recorder.run, max_size=8)

    async def scenario() -> int:
        first, second = batcher.submit(1), batcher.submit(2)
        second.cancel()
        return await first

    assert asyncio.run(scenario()) == 10 and recorder.batches == [[1]]

    failing = TickBatcher(Recorder(fail=True).run, max_size=8)

    async def failed() -> list[BaseException | int]:
        return list(await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True))

    assert [str(result) for result in asyncio.run(failed())] == ["the batch failed"] * 2


def test_each_call_reports_its_size_and_its_items_waits() -> None:
    seen: list[tuple[int, int]] = []
    batcher = TickBatcher(Recorder().run, max_size=3, observe=lambda size, waits: seen.append((size, len(waits))))

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    asyncio.run(scenario())
    assert seen == [(3, 3), (2, 2)]


def test_submitting_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        TickBatcher(Recorder().run, max_size=2).submit(1)
