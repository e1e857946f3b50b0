"""TaskDrainer: mode Drain's wait. It follows the job's AgentTasks (watchwait.WatchedWait: one
label-selector list, then a watch) until the tasks it lets run have all finished, the window's
deadline has passed, or the cancellation is forced; the decisions are policies.drain's drain_tally
and drain_wait, this module only feeds them what the API says.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from necrocode.clock import Clock
from necrocode.kube import Kube, nc_path
from necrocode.logs import Bound
from necrocode.model import Ref
from necrocode.policies.drain import DrainEnd, DrainTally, drain_tally, drain_wait
from necrocode.watchwait import WatchedWait

Obj = dict[str, Any]


class TaskDrainer(WatchedWait[DrainTally, DrainEnd]):
    def __init__(self, kube: Kube, namespace: str, selector: str, *, me: Ref, started_at: datetime,
                 only: frozenset[str] | None, belongs: Callable[[Obj], bool], clock: Clock, log: Bound,
                 on_tally: Callable[[DrainTally], None] = lambda t: None):
        super().__init__(kube, nc_path(namespace, "agenttasks"), selector, keep=belongs, clock=clock, log=log,
                         what="drain: the job's tasks", tally=DrainTally(), on_tally=on_tally)
        self.me, self.started_at, self.only = me, started_at, only

    def tally_of(self, objs: dict[str, Obj]) -> DrainTally:
        return drain_tally(objs.values(), self.me, self.started_at, self.only)

    def rule(self, now: datetime, deadline: datetime, tally: DrainTally, forced: bool) -> float | DrainEnd:
        return drain_wait(now, deadline, tally, forced)
