"""CooperativeWindow: the wait of the cooperative stop window (spec.cooperativeSeconds). It
follows the job's runner pods (watchwait.WatchedWait: one label-selector list of the full pods,
for their phase, then a watch; the pods of one job, so bounded) until every signalled runner has
ended by itself, the window's deadline has passed, or the cancellation is forced; the decisions
are policies.cooperative's, this module only feeds them what the API says. After a failed list it
ends at the deadline with what it last saw (TerminateRunners deletes what is left, as without a
window).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from necrocode.clock import Clock
from necrocode.kube import Kube, core_path
from necrocode.logs import Bound
from necrocode.policies.cooperative import CooperativeEnd, CooperativeTally, cooperative_tally, cooperative_wait
from necrocode.watchwait import WatchedWait

Obj = dict[str, Any]


class CooperativeWindow(WatchedWait):
    def __init__(self, kube: Kube, namespace: str, selector: str, *, signalled: frozenset[str],
                 wanted: Callable[[Obj], bool], clock: Clock, log: Bound,
                 on_tally: Callable[[CooperativeTally], None] = lambda t: None):
        super().__init__(kube, core_path(namespace, "pods"), selector, keep=wanted, clock=clock, log=log,
                         what="cooperative window: the runners")
        self.signalled, self.on_tally = signalled, on_tally
        self.tally = CooperativeTally(waiting=tuple(sorted(signalled)))

    def observe(self, objs: dict[str, Obj]) -> None:
        tally = cooperative_tally(self.signalled, objs)
        if tally != self.tally:
            self.tally = tally
            self.on_tally(tally)

    def verdict(self, deadline: datetime, forced: bool) -> float | CooperativeEnd:
        return cooperative_wait(self.clock.now(), deadline, self.tally, forced)

    async def wait(self, deadline: datetime, forced: asyncio.Event) -> CooperativeEnd:
        return cast(CooperativeEnd, await super().wait(deadline, forced))
