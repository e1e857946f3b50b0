"""Bounded parallelism for API calls: never more than `limit` in flight for one operation, nor
more than the current cancellation's own in-flight budget (necrocode.budget): workers beyond it
would only wait in the client for a slot, each holding its task and item meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from necrocode.budget import CURRENT


async def bounded(items: Iterable[Any], fn: Callable[[Any], Awaitable[object]], limit: int) -> None:
    """Run fn over items with at most `limit` at once (capped by the cancellation's budget)."""
    own = CURRENT.get()
    if own is not None and own.concurrency > 0:
        limit = min(limit, own.concurrency)
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


async def together(*calls: Awaitable[Any]) -> list[Any]:
    """Await calls that do not depend on each other at once, their answers in order: a step
    waits for one round trip, not one per call. The first to fail cancels the others, which are
    awaited (none is left running unseen, as asyncio.gather would leave them), and its own
    exception is raised as it is, not wrapped in an ExceptionGroup as a TaskGroup would: the
    callers handle ApiError."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
