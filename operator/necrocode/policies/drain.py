"""Mode Drain's rules: which tasks are let run, where a drain stands, and when it is over (the
time is passed in). The drainer (drainer.py) feeds them what the API says."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from necrocode.model import AffectedTask, Ref, TaskState, parse_time
from necrocode.planning import changed_by, is_running, task_state
from necrocode.policies.window import window_wait

Obj = dict[str, Any]


def drain_split(affected: Iterable[AffectedTask]) -> tuple[list[AffectedTask], list[AffectedTask]]:
    """(let run, change now) of a Drain: tasks with a runner, or Running, are let finish; the
    others (Pending, Ready, Blocked) get their new state at once, as in mode Cancel."""
    let_run: list[AffectedTask] = []
    now: list[AffectedTask] = []
    for a in affected:
        (let_run if a.runner or a.before == TaskState.RUNNING.value else now).append(a)
    return let_run, now


@dataclass(frozen=True)
class DrainTally:
    """Where a drain stands, from the tasks as listed (and watched) now."""

    still_running: tuple[str, ...] = ()
    """Tasks still running (names), of those the drain lets run."""
    ended_otherwise: int = 0
    """Tasks another cancellation cancelled (or blocked) inside the window: not finished by themselves."""

    def finished_in_window(self, running_at_start: int) -> int:
        """How many of the tasks running when the drain began finished by themselves: counted
        from what is recorded when it began and what the tasks say now, so a drain resumed after
        a restart counts the same."""
        return max(0, running_at_start - len(self.still_running) - self.ended_otherwise)


def drain_tally(tasks: Iterable[Obj], me: Ref, started_at: datetime, only: frozenset[str] | None = None) -> DrainTally:
    """`only`: the task names the drain concerns (a TaskCancellation's affected tasks); None: the
    whole job."""
    running: list[str] = []
    otherwise = 0
    for t in tasks:
        name = t["metadata"]["name"]
        if only is not None and name not in only:
            continue
        if is_running(t):
            running.append(name)
            continue
        if task_state(t) in (TaskState.CANCELLED, TaskState.BLOCKED) and not changed_by(t, me):
            when = _cancelled_at(t)
            otherwise += when is not None and when >= started_at
    return DrainTally(tuple(sorted(running)), otherwise)


def _cancelled_at(task: Obj) -> datetime | None:
    """status.cancellation.cancelledAt of a task, None when absent or not a time (written by
    others: it can hold anything)."""
    rec = (task.get("status") or {}).get("cancellation")
    raw = rec.get("cancelledAt") if isinstance(rec, Mapping) else None
    try:
        when = parse_time(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


DrainEnd = Literal["AllFinished", "Deadline", "Forced"]
ALL_FINISHED: Literal["AllFinished"] = "AllFinished"


def drain_wait(now: datetime, deadline: datetime, tally: DrainTally, forced: bool) -> float | DrainEnd:
    """How long the drain may still wait for its running tasks (seconds, > 0), or why it is over:
    forced (spec.force turned on: stop now), every task finished, or the deadline passed."""
    return window_wait(now, deadline, bool(tally.still_running), forced, ALL_FINISHED)
