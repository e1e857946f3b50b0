"""CooperativeWindow: the wait of the cooperative stop window (spec.cooperativeSeconds). It
follows the job's runner pods (watchwait.WatchedWait: one label-selector list of the full pods,
for their phase, then a watch; the pods of one job, so bounded) until every signalled runner has
ended by itself, the window's deadline has passed, or the cancellation is forced; the decisions
are policies.cooperative's, this module only feeds them what the API says. After a failed list it
ends at the deadline with what it last saw (TerminateRunners deletes what is left, as without a
window).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from necrocode.clock import Clock
from necrocode.kube import Kube, core_path
from necrocode.logs import Bound
from necrocode.policies.cooperative import CooperativeEnd, CooperativeTally, cooperative_tally, cooperative_wait
from necrocode.watchwait import WatchedWait

Obj = dict[str, Any]


class CooperativeWindow(WatchedWait[CooperativeTally, CooperativeEnd]):
    def __init__(self, kube: Kube, namespace: str, selector: str, *, signalled: frozenset[str],
                 wanted: Callable[[Obj], bool], clock: Clock, log: Bound,
                 on_tally: Callable[[CooperativeTally], None] = lambda t: None):
        super().__init__(kube, core_path(namespace, "pods"), selector, keep=wanted, clock=clock, log=log,
                         what="cooperative window: the runners", tally=CooperativeTally(waiting=tuple(sorted(signalled))),
                         on_tally=on_tally)
        self.signalled = signalled

    def tally_of(self, objs: dict[str, Obj]) -> CooperativeTally:
        return cooperative_tally(self.signalled, objs)

    def rule(self, now: datetime, deadline: datetime, tally: CooperativeTally,
             forced: bool) -> float | CooperativeEnd:
        return cooperative_wait(now, deadline, tally, forced)
