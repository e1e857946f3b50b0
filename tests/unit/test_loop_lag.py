"""necrocode.looplag: how late the event loop runs what is due (necrocode_event_loop_lag_seconds),
which says how much of a measured round trip was the operator's own wait, not the API server's."""

from __future__ import annotations

import asyncio
import time

from necrocode import looplag


async def test_a_blocked_loop_is_reported_as_late_by_as_long_as_it_was_blocked() -> None:
    reports: list[float] = []
    reported = asyncio.Event()

    def report(worst: float) -> None:
        reports.append(worst)
        reported.set()

    task = asyncio.create_task(looplag.watch(report, period=0.005, window=0.02))
    try:
        await asyncio.wait_for(reported.wait(), 5)  # a window of a loop with nothing else to do
        reported.clear()
        quiet = len(reports)
        time.sleep(0.2)  # noqa: ASYNC251 - the loop blocked on purpose: one long piece of work
        await asyncio.wait_for(reported.wait(), 5)
        assert reports[quiet] >= 0.19
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_it_stops_when_cancelled() -> None:
    task = asyncio.create_task(looplag.watch(lambda worst: None, period=0.001, window=0.001))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
