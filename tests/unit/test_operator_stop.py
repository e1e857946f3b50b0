"""The operator's cleanup raises kopf's stop flag (handlers/lifecycle.cleanup). kopf waits on that
flag in a task of its own, which a SIGTERM's stop leaves pending; kopf's shutdown gives such
leftover tasks 5 s before it cancels them, so without this every leader-elected replica (whose
flag is the elector's) sat 5 s longer in its termination grace period."""

from __future__ import annotations

import asyncio
import threading

import pytest

from necrocode.handlers.lifecycle import cleanup, new_memo
from necrocode.settings import Settings


@pytest.mark.parametrize("flag", [asyncio.Event, threading.Event])
async def test_cleanup_raises_the_stop_flag(flag: type[asyncio.Event] | type[threading.Event]) -> None:
    stop = flag()
    memo = new_memo(Settings(), 0, stop)
    await cleanup(memo=memo)
    assert stop.is_set()


async def test_cleanup_without_a_flag_stops_too() -> None:
    memo = new_memo(Settings(), 0)
    await cleanup(memo=memo)
    assert memo.service is None and memo.stop_flag is None
