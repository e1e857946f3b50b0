"""TaskDrainer: mode Drain's wait. It follows the job's AgentTasks (one label-selector list, then
a watch from its resourceVersion) until the tasks it lets run have all finished, the window's
deadline has passed, or the cancellation is forced; the decisions are policies.drain's drain_tally and
drain_wait, this module only feeds them what the API says.

A watch that ends (its timeout, a reset, 410 Gone) is followed by a new list: what happened in
between is in that list, so nothing is missed; a list that fails past the client's retries is
tried again after a short pause until the deadline, after which the drain ends with what it last
saw (the next steps cancel whatever still runs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from necrocode.clock import Clock
from necrocode.kube import ApiError, Kube, nc_path
from necrocode.logs import Bound
from necrocode.model import Ref
from necrocode.policies.drain import DrainEnd, DrainTally, drain_tally, drain_wait

Obj = dict[str, Any]
RELIST_PAUSE_SECONDS = 1.0
"""After a failed list (past the client's own retries): the pause before the next one."""
WATCH_SECONDS = 60
"""A watch is renewed at least this often (a fresh list each time: bounded staleness)."""


class TaskDrainer:
    def __init__(self, kube: Kube, namespace: str, selector: str, *, me: Ref, started_at: datetime,
                 only: frozenset[str] | None, belongs: Callable[[Obj], bool], clock: Clock, log: Bound,
                 on_tally: Callable[[DrainTally], None] = lambda t: None):
        self.kube, self.path, self.selector = kube, nc_path(namespace, "agenttasks"), selector
        self.me, self.started_at, self.only, self.belongs = me, started_at, only, belongs
        self.clock, self.log, self.on_tally = clock, log, on_tally
        self.tally = DrainTally()

    async def wait(self, deadline: datetime, forced: asyncio.Event) -> DrainEnd:
        """Until the drain is over; returns why (self.tally holds what it last saw)."""
        while True:
            try:
                items, rv = await self.kube.list_all(self.path, label_selector=self.selector)
            except ApiError as exc:
                self.log.warning("drain: listing the job's tasks failed; trying again", error=exc.message)
                verdict = drain_wait(self.clock.now(), deadline, self.tally, forced.is_set())
                if isinstance(verdict, str):
                    return verdict
                await self._pause(min(verdict, RELIST_PAUSE_SECONDS), forced)
                continue
            tasks = {t["metadata"]["name"]: t for t in items if self.belongs(t)}
            verdict = self._decide(tasks, deadline, forced)
            if isinstance(verdict, str):
                return verdict
            await self._follow(tasks, rv, deadline, forced, verdict)
            verdict = self._decide(tasks, deadline, forced)
            if isinstance(verdict, str):
                return verdict

    def _decide(self, tasks: dict[str, Obj], deadline: datetime, forced: asyncio.Event) -> float | DrainEnd:
        tally = drain_tally(tasks.values(), self.me, self.started_at, self.only)
        if tally != self.tally:
            self.tally = tally
            self.on_tally(tally)
        return drain_wait(self.clock.now(), deadline, tally, forced.is_set())

    async def _follow(self, tasks: dict[str, Obj], rv: str, deadline: datetime, forced: asyncio.Event,
                      left: float) -> None:
        """Apply watch events to `tasks` until the drain is over, or the watch ends (at most
        `left` seconds, the time to the deadline; at once when forced)."""
        async def consume() -> None:
            async for event in self.kube.watch(self.path, label_selector=self.selector, resource_version=rv,
                                               timeout_seconds=int(min(left, WATCH_SECONDS)) + 1):
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                if event.get("type") == "BOOKMARK" or not name:
                    continue
                if event.get("type") == "DELETED" or not self.belongs(obj):
                    tasks.pop(name, None)
                else:
                    tasks[name] = obj
                if isinstance(self._decide(tasks, deadline, forced), str):
                    return

        watcher = asyncio.create_task(consume())
        force = asyncio.create_task(forced.wait())
        try:
            await asyncio.wait({watcher, force}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watcher, force):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await force
            try:
                await watcher
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # a reset, 410 Gone, a refusal: list again, after a pause
                self.log.info("drain: watch of the job's tasks ended; listing again", error=str(exc))
                await self._pause(min(left, RELIST_PAUSE_SECONDS), forced)

    async def _pause(self, seconds: float, forced: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await forced.wait()
