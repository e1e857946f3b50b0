"""What the engine runs, keeps or skips when a cancellation (re)starts, how long it has left,
and what its runner counts start from after a restart (policies.resume): table tests over
plain status values. test_crash_recovery and test_reliability prove the engine follows them
across real operator restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from necrocode.clock import ManualClock
from necrocode.model import DONE_STEP_STATES, CancellationStatus, Progress, RunnerOutcome, StepState, iso
from necrocode.policies.resume import (
    StepAction,
    cancellation_bound,
    deferral_limit,
    out_of_time,
    prior_termination,
    step_action,
    time_left,
)
from necrocode.policies.termination import count_away

T0 = datetime(2026, 12, 2, 4, 0, 0, tzinfo=UTC)
KEEP, SKIP, RUN = StepAction.KEEP, StepAction.SKIP, StepAction.RUN


# ----------------------------------------------------------------------------- steps
@pytest.mark.parametrize(("state", "stop", "failed_critical", "want"), [
    *[(s, stop, crit, (KEEP, "")) for s in sorted(DONE_STEP_STATES) for stop in (False, True) for crit in (False, True)],
    (StepState.PENDING, False, False, (RUN, "")),
    (StepState.RUNNING, False, False, (RUN, "")),          # at work when the last operator stopped: again
    (StepState.PENDING, True, False, (SKIP, "not needed")),
    (StepState.RUNNING, True, True, (SKIP, "not needed")),  # an early end wins over the failure
    (StepState.PENDING, False, True, (SKIP, "skipped after a failed step")),
    (StepState.RUNNING, False, True, (SKIP, "skipped after a failed step")),
])
def test_done_steps_are_kept_and_the_rest_run_unless_the_request_ended(state: StepState, stop: bool,
                                                                       failed_critical: bool,
                                                                       want: tuple[StepAction, str]) -> None:
    assert step_action(state, stop=stop, failed_critical=failed_critical) == want


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize(("started_at", "seconds", "left"), [
    (None, 0, 300.0),                   # not started yet: the whole bound
    (T0, 0, 300.0),
    (T0, 100, 200.0),                   # resumed 100 s after it started: no new bound
    (T0, 299, 1.0),                     # one second before the bound
    (T0, 300, 0.0),                     # exactly at it
    (T0, 1000, 0.0),                    # past it: no time at all, never negative
    (T0 + timedelta(seconds=5), 0, 305.0),  # stamped ahead of this clock (another replica): counted from it
])
def test_a_cancellation_has_what_is_left_of_its_bound_since_it_started(started_at: datetime | None, seconds: float,
                                                                      left: float) -> None:
    clock = ManualClock(T0)
    clock.advance(seconds)
    assert time_left(300.0, iso(started_at), clock.now()) == left


def test_a_job_cancellation_is_bounded_by_its_wait_for_earlier_task_cancellations_too() -> None:
    assert deferral_limit(stuck_timeout=60.0, escalate_after=10) == 100.0
    task = cancellation_bound(30, 10, 60.0, call_budget=2.0, steps=7, is_job=False)
    job = cancellation_bound(30, 10, 60.0, call_budget=2.0, steps=7, is_job=True)
    assert task == 30 + 10 + 60 + 7 * 3 * 2.0
    assert job - task == deferral_limit(60.0, 10)
    assert cancellation_bound(0, 10, 60.0, 2.0, 7, False) == task - 30  # a forced one owes no grace


def test_out_of_time_fails_the_step_at_work_and_skips_those_not_started() -> None:
    status = CancellationStatus()
    for name, state in [("Validate", StepState.SUCCEEDED), ("Signal", StepState.RUNNING), ("Cleanup", StepState.PENDING)]:
        status.step(name).state = state
    lost = out_of_time(status, [("Validate", True), ("Signal", False), ("Cleanup", False)], 299.6, T0)
    assert lost is False  # the step lost is not critical: PartiallyCompleted, not Failed
    assert [(s.name, s.state) for s in status.steps] == [
        ("Validate", StepState.SUCCEEDED), ("Signal", StepState.FAILED), ("Cleanup", StepState.SKIPPED)]
    assert status.step("Signal").finished_at == iso(T0)
    assert status.step("Signal").message == "did not finish within the cancellation's bound of 300s"
    assert [(e.step, e.object) for e in status.errors] == [("Signal", "-")]
    assert status.step("Cleanup").message == "skipped: the cancellation's bound ran out"

    critical = CancellationStatus()
    critical.step("Validate").state = StepState.RUNNING
    assert out_of_time(critical, [("Validate", True), ("Signal", False)], 10, T0) is True


# ----------------------------------------------------------------------------- runners after a restart
def outcomes(**by_pod: str) -> list[RunnerOutcome]:
    return [RunnerOutcome.model_validate({"pod": p, "outcome": o}) for p, o in by_pod.items()]


@pytest.mark.parametrize(("progress", "recorded", "fresh", "total", "gone", "forced", "stuck"), [
    # a fresh run counts from the list its SignalRunners handed over, whatever was written
    (Progress(runnersTotal=4), [], True, 0, set(), set(), set()),
    (Progress(runnersTotal=4), [], False, 4, set(), set(), set()),
    # recorded by name: gone, forced, stuck
    (Progress(runnersTotal=4, runnersTerminated=2, runnersForced=1), outcomes(a="Terminated", b="Forced", c="Stuck"),
     False, 4, {"a", "b"}, {"b"}, {"c"}),
    # counted but not listed by name (the list is bounded): placeholders, forced ones first
    (Progress(runnersTotal=6, runnersTerminated=4, runnersForced=3), outcomes(b="Forced"),
     False, 6, {"b", "(earlier-0)", "(earlier-1)", "(earlier-2)"}, {"b", "(earlier-0)", "(earlier-1)"}, set()),
    (Progress(runnersTotal=3, runnersTerminated=1), outcomes(a="AlreadyGone"), False, 3, {"a"}, set(), set()),
])
def test_a_resumed_terminate_step_starts_from_what_its_status_recorded(
        progress: Progress, recorded: list[RunnerOutcome], fresh: bool, total: int, gone: set[str], forced: set[str],
        stuck: set[str]) -> None:
    prior = prior_termination(progress, recorded, fresh=fresh)
    assert (prior.total, prior.gone, prior.forced, set(prior.stuck)) == (total, gone, forced, stuck)
    if not fresh:
        assert prior.terminated == max(progress.runners_terminated, len(gone))
        assert len(prior.forced & prior.gone) == progress.runners_forced


def test_after_a_restart_with_partial_status_every_runner_is_counted_exactly_once() -> None:
    """5 runners recorded, 2 gone by name before the restart; 1 still there now: the other 2
    went while no operator watched. The counts add up, and the 2 already gone stay as they were."""
    prior = prior_termination(Progress(runnersTotal=5, runnersTerminated=2, runnersForced=1),
                              outcomes(a="Terminated", b="Forced"), fresh=False)
    count_away(prior, present=1, forced_only=False)
    assert prior.total == 5
    assert prior.terminated == 4 and prior.forced == {"b"}
    assert prior.terminated + 1 == prior.total
