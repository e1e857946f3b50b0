"""concurrency.together: independent calls at once, answers in order; the first failure cancels
the rest (none left running unseen) and is raised as it is, so callers still catch ApiError."""

from __future__ import annotations

import asyncio

import pytest

from necrocode.concurrency import together
from necrocode.kube import NotFound


async def test_the_answers_come_in_the_order_asked_and_the_calls_overlap() -> None:
    running = 0
    most = 0

    async def call(x: int, pause: float) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(pause)
        running -= 1
        return x

    assert await together(call(1, 0.03), call(2, 0.0), call(3, 0.01)) == [1, 2, 3]
    assert most == 3


async def test_the_first_failure_is_raised_as_it_is_and_cancels_the_others() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fails() -> None:
        await started.wait()
        raise NotFound(404, "NotFound", "gone")

    with pytest.raises(NotFound):  # not an ExceptionGroup
        await together(slow(), fails())
    assert cancelled.is_set()  # awaited before the raise: nothing left running


async def test_a_cancelled_caller_cancels_every_call() -> None:
    cancelled = 0

    async def slow() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    outer = asyncio.ensure_future(together(slow(), slow()))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled == 2
