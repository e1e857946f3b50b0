"""Which tasks get an Event of their own (steps._task_events): the first task_events_limit by
name, as the operator's Event budget allows, one TasksChanged summary counting the rest; and a
retried UpdateTaskStates asks for no task twice, so it spends no token and counts no refusal
for an Event that already exists. The Events are recorded where the recorder would send them
(no API server here: tests/cluster/test_event_budget.py writes them to a real one)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from necrocode import metrics
from necrocode.clock import ManualClock
from necrocode.events import DetailEvents, EventRecorder
from necrocode.logs import Bound
from necrocode.model import AffectedTask, CancellationSpec, CancellationStatus
from necrocode.settings import Settings
from necrocode.steps import Ctx, _task_events


class Recorded(EventRecorder):
    """Keeps each Event it would write: (involved object's name, reason, message)."""

    def __init__(self, clock: ManualClock, details: DetailEvents) -> None:
        super().__init__(None, clock, "uid-1", Bound(), details=details)  # type: ignore[arg-type]
        self.written: list[tuple[str, str, str]] = []

    async def write(self, involved: Any, key: str, reason: str, message: str, type_: str = "Normal") -> None:
        self.written.append((involved["metadata"]["name"], reason, message))


def ctx_for(limit: int, qps: float, burst: int) -> tuple[Ctx, Recorded]:
    clock = ManualClock(datetime(2026, 12, 4, tzinfo=UTC))
    settings = Settings(task_events_limit=limit, event_qps=qps, event_burst=burst)
    events = Recorded(clock, DetailEvents(qps, burst, clock))
    ctx = Ctx(kube=None, settings=settings, clock=clock, kind="JobCancellation",  # type: ignore[arg-type]
              namespace="ns", name="stop", uid="uid-1", spec=CancellationSpec.model_validate({"jobName": "j"}),
              status=CancellationStatus(), log=Bound(), events=events, registry=None,  # type: ignore[arg-type]
              cleaner=None, changed=lambda: None, flush=None)  # type: ignore[arg-type]
    return ctx, events


def tasks(n: int) -> list[AffectedTask]:
    # named out of order: the Events go by name, whatever order the tasks changed in
    return [AffectedTask(taskId=f"t{i}", name=f"j-t{i}", before="Running", after="Cancelled", reason="asked")
            for i in reversed(range(n))]


def skipped() -> float:
    return metrics.EVENTS_SKIPPED._value.get()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("limit", "qps", "burst", "own", "summary"), [
    (3, 0, 1, ["j-t0", "j-t1", "j-t2"], "3 Cancelled by jobcancellation/stop besides the 3 with an Event of their "
                                          "own (at most 3 per cancellation;"),
    (100, 10, 2, ["j-t0", "j-t1"], "4 Cancelled by jobcancellation/stop besides the 2 with an Event of their own "
                                   "(at most 100 per cancellation and the operator's Event budget of 10/s;"),
    (100, 10, 200, [f"j-t{i}" for i in range(6)], None),
])
async def test_the_first_tasks_by_name_get_an_event_as_the_limit_and_the_budget_allow(
        limit: int, qps: float, burst: int, own: list[str], summary: str | None) -> None:
    ctx, events = ctx_for(limit, qps, burst)
    before = skipped()
    await _task_events(ctx, tasks(6))
    await events.drain()
    assert sorted(n for n, reason, _ in events.written if reason == "Cancelled") == own
    summaries = [m for n, reason, m in events.written if reason == "TasksChanged"]
    if summary is None:
        assert summaries == []
    else:
        assert len(summaries) == 1 and summaries[0].startswith(summary), summaries
    # only the budget's refusals are counted (the limit is a setting, not a shortage)
    assert skipped() - before == min(limit, 6) - len(own)


async def test_a_retried_step_asks_for_no_task_twice() -> None:
    ctx, events = ctx_for(limit=100, qps=10, burst=2)
    await _task_events(ctx, tasks(6))
    after_first = skipped()
    ctx.clock.advance(60)  # type: ignore[attr-defined]  # the budget is full again: 2 tokens
    await _task_events(ctx, tasks(6))  # UpdateTaskStates again (a transient failure after its Events)
    await events.drain()
    own = [n for n, reason, _ in events.written if reason == "Cancelled"]
    assert sorted(own) == ["j-t0", "j-t1"]  # no second Event for a task, no new one for a refused task
    assert skipped() == after_first  # and no refusal counted twice
    summaries = [m for n, reason, m in events.written if reason == "TasksChanged"]
    assert [s.split(" by ")[0] for s in summaries] == ["4 Cancelled", "4 Cancelled"]  # the same key: 409 keeps one
    assert ctx.events.details is not None and ctx.events.details.admit()  # the retry spent none of the tokens
