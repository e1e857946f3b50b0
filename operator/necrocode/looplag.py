"""How late the operator's event loop runs what is due (necrocode_event_loop_lag_seconds).

Why: everything the operator does runs on one event loop, and every round trip it measures
(the adaptive in-flight limit's, necrocode.policies.adaptive) ends only when the loop gets to
the answer. While the loop is busy with watch events and status writes, an answer that has
arrived waits in the socket, and its round trip grows by that wait, which says nothing of the
API server. This watcher times a short sleep again and again: how much later than asked it
wakes is the wait anything due on the loop had then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

PERIOD = 0.02
"""How long each timed sleep asks for (seconds): short enough to see a busy stretch of a tenth
of a second, long enough to cost nothing (50 wakes a second)."""
WINDOW = 1.0
"""Each report is the worst lateness seen over this many seconds."""


async def watch(report: Callable[[float], None], period: float = PERIOD, window: float = WINDOW) -> None:
    """Report the worst lateness of each `window` seconds to `report` (the operator sets the
    gauge); runs until cancelled (the operator's cleanup cancels it)."""
    loop = asyncio.get_running_loop()
    worst, since = 0.0, loop.time()
    while True:
        asked = loop.time()
        await asyncio.sleep(period)
        now = loop.time()
        worst = max(worst, now - asked - period)
        if now - since >= window:
            report(worst)
            worst, since = 0.0, now
