"""Bounded parallelism for API calls: never more than `limit` in flight for one operation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


async def bounded(items: Iterable[Any], fn: Callable[[Any], Awaitable[object]], limit: int) -> None:
    """Run fn over items with at most `limit` at once."""
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))
