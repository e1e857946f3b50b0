"""TaskDrainer: mode Drain's wait. It follows the job's AgentTasks (watchwait.WatchedWait: one
label-selector list, then a watch) until the tasks it lets run have all finished, the window's
deadline has passed, or the cancellation is forced; the decisions are policies.drain's drain_tally
and drain_wait, this module only feeds them what the API says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from necrocode.clock import Clock
from necrocode.kube import Kube, nc_path
from necrocode.logs import Bound
from necrocode.model import Ref
from necrocode.policies.drain import DrainEnd, DrainTally, drain_tally, drain_wait
from necrocode.watchwait import WatchedWait

Obj = dict[str, Any]


class TaskDrainer(WatchedWait):
    def __init__(self, kube: Kube, namespace: str, selector: str, *, me: Ref, started_at: datetime,
                 only: frozenset[str] | None, belongs: Callable[[Obj], bool], clock: Clock, log: Bound,
                 on_tally: Callable[[DrainTally], None] = lambda t: None):
        super().__init__(kube, nc_path(namespace, "agenttasks"), selector, keep=belongs, clock=clock, log=log,
                         what="drain: the job's tasks")
        self.me, self.started_at, self.only, self.on_tally = me, started_at, only, on_tally
        self.tally = DrainTally()

    def observe(self, objs: dict[str, Obj]) -> None:
        tally = drain_tally(objs.values(), self.me, self.started_at, self.only)
        if tally != self.tally:
            self.tally = tally
            self.on_tally(tally)

    def verdict(self, deadline: datetime, forced: bool) -> float | DrainEnd:
        return drain_wait(self.clock.now(), deadline, self.tally, forced)

    async def wait(self, deadline: datetime, forced: asyncio.Event) -> DrainEnd:
        return cast(DrainEnd, await super().wait(deadline, forced))
