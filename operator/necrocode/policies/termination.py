"""When the terminator acts on a runner: delete it, force it, call it stuck, or wake up to look
again (seed 3, 8.2, 11.2).

Wall-clock deadlines come from each pod's own deletionTimestamp (planning.runner_clock), which
the API server stamped, so a terminator started again after an operator restart gets the same
answers from the same pods; this process's own timers (since a force delete, since the first
delete attempt) are monotonic seconds (`mono`). terminator.RunnerTerminator carries the
decisions out against the API.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from necrocode.planning import RunnerClock, escalation_delay, next_wakeup, runner_clock

Pod = dict[str, Any]

CEILING = 5.0
"""The longest the terminator waits for news before it lists the runners again (a missed event)."""

FINISHED_REUSE = 2.0
"""How long (monotonic seconds from when it was asked for) one list of the job's finished tasks
answers the forcing rounds that follow. Runners come due one after the other as their own
deadlines pass, so a big cancellation forces in rounds, each of which listed all the job's
tasks first (5,000 runners forced over 16 s: 9 lists of 5,000 tasks, 7 with this; megabytes
each). A task that finished within the window before its runner came due is then forced
like one that finished a moment after the list: the rule (a finished task's runner is let go
with its grace) was always as of the latest list."""


@dataclass
class Termination:
    """What happened to the runners; kept across calls so progress only ever moves forward."""

    total: int = 0
    forced: set[str] = field(default_factory=set)
    stuck: dict[str, str] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    """The API's last refusal of a delete of this runner (for the status, if it ends stuck)."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Delete attempts of this runner that failed (retries of the one policy included)."""
    transient: set[str] = field(default_factory=set)
    """Runners whose last failure was a fault of the API, not an answer."""
    let_go: set[str] = field(default_factory=set)
    """Runners whose task reached Done or Failed by itself: deleted with their grace, never forced
    (cancel versus complete); still there at the stuck timeout, they are reported stuck."""

    @property
    def not_forceable(self) -> set[str]:
        """Runners the terminator must not force (again): forced already, or let go."""
        return self.forced | self.let_go

    @property
    def terminated(self) -> int:
        return len(self.gone)


def finished_list_fresh(listed_at: float | None, mono: float, reuse: float = FINISHED_REUSE) -> bool:
    """May the finished tasks listed at `listed_at` answer a forcing round at `mono`? (None:
    never listed; a clock that went back: not fresh.)"""
    return listed_at is not None and 0.0 <= mono - listed_at < reuse


def count_away(state: Termination, present: int, forced_only: bool) -> None:
    """The total of a terminator that starts with `present` runners to stop. New: those. Resumed
    (a total recorded before a restart): the runners of that total neither present now nor
    counted gone went while no operator watched; they are counted gone now (and forced, when this
    request deletes with grace 0 only), so the counts add up to the total."""
    if state.total == 0:
        state.total = present
        return
    away = state.total - present - state.terminated
    for i in range(max(0, away)):
        state.gone.add(f"(away-{i})")
        if forced_only:
            state.forced.add(f"(away-{i})")
    state.total = max(state.total, present + state.terminated)


def delete_needed(pod: Pod, grace: int, now: datetime) -> bool:
    """Does this runner need our delete? Not when it is already deleting with no more grace left
    than we would give it (a delete can shorten a pod's grace, never lengthen it)."""
    clock = runner_clock(pod, 0)
    return clock is None or (clock.grace_end - now).total_seconds() > grace


def repair_grace(pod: Pod, escalate_after: int, grace: int, now: datetime) -> int | None:
    """Verify's one repair of a runner still there: delete it with `grace` if it was never
    deleted, force it (0) once its grace and the escalation delay ran out, and leave it alone
    (None) while inside them: Verify never takes grace away. A runner already deleted with no
    grace (deletionGracePeriodSeconds 0: force-deleted, held only by its finalizers) is left too:
    a second force delete cannot change it (5,000 such runners cost Verify 20 s of DELETEs)."""
    clock = runner_clock(pod, escalate_after)
    if clock is None:
        return grace
    if (pod.get("metadata") or {}).get("deletionGracePeriodSeconds") == 0:
        return None
    return None if clock.escalate_at > now else 0


@dataclass(frozen=True)
class Wake:
    """How long the terminator waits for watch events, and what it does on none."""

    seconds: float
    resync: bool
    """On no news by then, list the runners again: nothing was due before the ceiling (an event
    may have been missed), or some deletes have not gone through yet (they are tried again)."""


class Schedule(dict[str, Pod]):
    """The runners still there, by name, with what each watch event must not pay a scan of every
    runner for (that is O(n^2) over a cancellation: at N = 1,000 a profile found 18 % of the
    operator's CPU in such scans): a heap of their escalation deadlines, the runners not deleted
    yet, and a heap of this terminator's own force deletes (for the stuck timeout). Runners
    leave by `del` or `pop`, which forget them everywhere."""

    def __init__(self, escalate_after: int, stuck_timeout: float):
        super().__init__()
        self.escalate_after, self.stuck_timeout = escalate_after, stuck_timeout
        self.undeleted_deadline = math.inf
        """Set when the first deletes go out. A runner whose graceful delete never went through (refused, failing) is forced once
        the grace and the escalation delay have run out since the first attempt (monotonic), like
        any other: every runner's end is bounded by grace + escalation + stuck timeout."""
        self.forced_at: dict[str, float] = {}
        """When each runner still here was force-deleted (monotonic); set through `mark_forced`."""
        self._heap: list[tuple[datetime, int, str]] = []
        self._version: dict[str, int] = {}
        self._seq = itertools.count()
        self._undeleted: dict[str, None] = {}
        """The runners whose pod has no deletionTimestamp (an ordered set: listing order)."""
        self._forced_heap: list[tuple[float, str]] = []

    def __setitem__(self, name: str, pod: Pod) -> None:
        super().__setitem__(name, pod)
        version = self._version[name] = next(self._seq)
        clock = runner_clock(pod, self.escalate_after)
        if clock is not None:
            heapq.heappush(self._heap, (clock.escalate_at, version, name))
            self._undeleted.pop(name, None)
        else:
            self._undeleted.setdefault(name)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._forget(name)

    def pop(self, name: str, *default: Any) -> Any:
        if name in self:
            self._forget(name)
        return super().pop(name, *default)

    def _forget(self, name: str) -> None:
        self._undeleted.pop(name, None)
        self.forced_at.pop(name, None)  # its heap entries are dropped when they reach the top

    def mark_forced(self, name: str, mono: float) -> None:
        """This terminator force-deleted the runner at `mono`: its stuck timeout runs from now."""
        self.forced_at[name] = mono
        heapq.heappush(self._forced_heap, (mono, name))

    def _live(self, version: int, name: str, skip: set[str]) -> bool:
        return name in self and self._version.get(name) == version and name not in skip

    def awaits_delete(self, name: str, forced: set[str]) -> bool:
        """A runner we have not managed to delete yet (no deletionTimestamp) and not forced: its
        delete is tried again."""
        return name in self._undeleted and name not in forced

    def undeleted(self, forced: set[str]) -> list[str]:
        return [n for n in self._undeleted if n not in forced]

    def due(self, now: datetime, mono: float, forced: set[str], escalated: bool) -> list[str]:
        """The runners to force now, each returned once per pod version: with `escalated` (a
        forced request escalated this one) every one not forced yet; else those whose grace and
        escalation delay ran out, and, past undeleted_deadline, those never deleted."""
        if escalated:
            return [n for n in self if n not in forced]
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _, version, name = heapq.heappop(self._heap)
            if self._live(version, name, forced):
                out.append(name)
        if mono >= self.undeleted_deadline:
            out += [n for n in self.undeleted(forced) if n not in out]
        return out

    def _first_forced(self) -> float | None:
        """The earliest force delete of a runner still here (stale heap entries dropped)."""
        heap = self._forced_heap
        while heap and (heap[0][1] not in self or self.forced_at.get(heap[0][1]) != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def stuck(self, mono: float) -> list[str]:
        """Runners still here stuck_timeout after their force delete: to be asked about."""
        first = self._first_forced()
        if first is None or mono - first < self.stuck_timeout:
            return []
        return [n for n, t in self.forced_at.items() if n in self and mono - t >= self.stuck_timeout]

    def _next_escalation(self, now: datetime, forced: set[str]) -> float | None:
        while self._heap:
            at, version, name = self._heap[0]
            if self._live(version, name, forced):
                return escalation_delay(RunnerClock(at, at), now)
            heapq.heappop(self._heap)
        return None

    def wake(self, now: datetime, mono: float, forced: set[str]) -> Wake:
        """The nearest of: a runner's escalation, the undeleted deadline (if some runner is not
        deleted), a forced runner's stuck timeout; at most CEILING, never 0 (no busy loop)."""
        undeleted = any(n not in forced for n in self._undeleted)
        first = self._first_forced()
        wait = next_wakeup(
            [self._next_escalation(now, forced), max(0.0, self.undeleted_deadline - mono) if undeleted else None,
             None if first is None else max(0.0, self.stuck_timeout - (mono - first))],
            ceiling=CEILING,
        )
        return Wake(max(wait, 0.01), resync=wait >= CEILING or undeleted)
