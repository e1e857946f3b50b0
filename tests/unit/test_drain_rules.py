"""Mode Drain's pure rules (policies.drain; the bound in policies.resume): what is let run, when it is over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from necrocode.model import AffectedTask, CancellationSpec, Ref
from necrocode.policies.drain import DrainTally, drain_split, drain_tally, drain_wait
from necrocode.policies.resume import spec_windows
from necrocode.steps import steps_for

ME = Ref("JobCancellation", "stop", "uid-me")
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def task(name: str, state: str, runner: str | None = None, cancelled_by: str | None = None,
         cancelled_at: Any = None) -> dict[str, Any]:
    st: dict[str, Any] = {"state": state}
    if runner:
        st["runner"] = runner
    if cancelled_by:
        name_of = "stop" if cancelled_by == ME.uid else "other-request"
        st["cancellation"] = {"cancelledByUid": cancelled_by, "cancelledBy": name_of, "cancelledAt": cancelled_at}
    return {"metadata": {"name": name}, "spec": {"taskId": name}, "status": st}


def affected(name: str, before: str, runner: str | None = None) -> AffectedTask:
    return AffectedTask(taskId=name, name=name, before=before, after="Cancelled", reason="r", runner=runner)


def test_running_tasks_are_let_run_the_others_change_at_once() -> None:
    let_run, now = drain_split([affected("a", "Running", "a-runner"), affected("b", "Pending"),
                                affected("c", "Ready"), affected("d", "Blocked"),
                                affected("e", "Pending", "e-runner")])  # a runner already: it works
    assert [a.name for a in let_run] == ["a", "e"]
    assert [a.name for a in now] == ["b", "c", "d"]


@pytest.mark.parametrize("tasks, only, running, otherwise", [
    ([task("a", "Running"), task("b", "Done"), task("c", "Failed")], None, ("a",), 0),
    ([task("a", "Pending", runner="r")], None, ("a",), 0),  # a runner: at work
    ([task("a", "Done", runner="r")], None, (), 0),  # finished, even with a runner named
    # cancelled by another request inside the window: ended, but not by itself
    ([task("a", "Cancelled", cancelled_by="other", cancelled_at="2026-12-01T12:00:05Z")], None, (), 1),
    # cancelled by another before the window: not one the drain let run
    ([task("a", "Cancelled", cancelled_by="other", cancelled_at="2026-12-01T11:59:00Z")], None, (), 0),
    # cancelled by this request (the tasks not running, changed at once): not "otherwise"
    ([task("a", "Cancelled", cancelled_by="uid-me", cancelled_at="2026-12-01T12:00:05Z")], None, (), 0),
    # a time nobody can read, or none: not counted, never an error
    ([task("a", "Cancelled", cancelled_by="other", cancelled_at="yesterday")], None, (), 0),
    ([task("a", "Cancelled", cancelled_by="other", cancelled_at=12)], None, (), 0),
    ([task("a", "Cancelled", cancelled_by="other", cancelled_at="2026-12-01T12:00:05")], None, (), 1),  # no zone: UTC
    # a TaskCancellation's drain: only its own tasks
    ([task("a", "Running"), task("b", "Running")], frozenset({"b"}), ("b",), 0),
])
def test_the_tally_of_a_drain(tasks: list[dict[str, Any]], only: frozenset[str] | None, running: tuple[str, ...],
                              otherwise: int) -> None:
    tally = drain_tally(tasks, ME, T0, only)
    assert tally == DrainTally(running, otherwise)


@pytest.mark.parametrize("at_start, running, otherwise, finished", [
    (3, 3, 0, 0), (3, 1, 0, 2), (3, 0, 1, 2), (3, 0, 0, 3),
    (1, 2, 0, 0),  # never negative (a record resumed from an older operator)
])
def test_finished_in_the_window_is_counted_from_the_start_and_now(at_start: int, running: int, otherwise: int,
                                                                   finished: int) -> None:
    tally = DrainTally(tuple(f"t{i}" for i in range(running)), otherwise)
    assert tally.finished_in_window(at_start) == finished


DEADLINE = T0 + timedelta(seconds=60)


@pytest.mark.parametrize("now, running, forced, expected", [
    (T0, ("a",), False, 60.0),
    (DEADLINE - timedelta(seconds=1), ("a",), False, 1.0),  # a tick before: still waiting
    (DEADLINE, ("a",), False, "Deadline"),  # exactly at the deadline: over
    (DEADLINE + timedelta(hours=1), ("a",), False, "Deadline"),  # resumed long after
    (T0, (), False, "AllFinished"),
    (DEADLINE, (), False, "AllFinished"),  # all finished wins over the deadline
    (T0, ("a",), True, "Forced"),
    (T0, (), True, "Forced"),
])
def test_when_the_drain_is_over(now: datetime, running: tuple[str, ...], forced: bool, expected: Any) -> None:
    assert drain_wait(now, DEADLINE, DrainTally(running), forced) == expected


def spec(**kw: Any) -> CancellationSpec:
    return CancellationSpec.model_validate({"jobName": "j", **kw})


@pytest.mark.parametrize("fields, windows", [
    ({}, 0.0),
    ({"mode": "Drain", "drainDeadlineSeconds": 600}, 600.0),
    ({"mode": "Drain", "drainDeadlineSeconds": 600, "cooperativeSeconds": 30}, 630.0),
    ({"cooperativeSeconds": 30}, 30.0),
    ({"mode": "Drain", "drainDeadlineSeconds": 600, "cooperativeSeconds": 30, "force": True}, 0.0),  # force: no wait
])
def test_the_bound_of_a_cancellation_includes_the_windows_its_spec_asks_for(fields: dict[str, Any],
                                                                              windows: float) -> None:
    assert spec_windows(spec(**fields)) == windows


def test_the_step_table_of_a_drain_has_its_drain_step_before_the_runners_are_signalled() -> None:
    for kind, before in (("JobCancellation", "ClassifyTasks"), ("TaskCancellation", "ComputeCascade")):
        cancel = [d.name for d in steps_for(kind)]
        drain = [d.name for d in steps_for(kind, "Drain")]
        assert "Drain" not in cancel
        at = drain.index("Drain")
        assert drain[at - 1] == before and drain[at + 1] == "SignalRunners"
        assert [n for n in drain if n != "Drain"] == cancel
