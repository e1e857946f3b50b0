"""The cooperative stop window's pure rules (policies.cooperative), the step table with a window,
and the runner outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from necrocode.model import CancellationSpec
from necrocode.policies.cooperative import (
    CooperativeTally,
    cooperative_tally,
    cooperative_wait,
    outcome_of,
    runner_ended,
    window_deadline,
)
from necrocode.policies.resume import spec_windows
from necrocode.policies.termination import Termination
from necrocode.steps import steps_for

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def pod(phase: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": phase} if phase else {}}


@pytest.mark.parametrize("phase, ended", [
    ("Running", False), ("Pending", False), (None, False), ("Unknown", False),
    ("Succeeded", True), ("Failed", True),
])
def test_a_runner_ended_when_its_containers_exited(phase: str | None, ended: bool) -> None:
    assert runner_ended(pod(phase)) is ended


def test_a_runner_whose_pod_is_gone_ended() -> None:
    assert runner_ended(None)


def test_the_tally_covers_the_signalled_runners_only() -> None:
    pods = {"a": pod("Succeeded"), "b": pod("Running"), "other": pod("Succeeded")}
    assert cooperative_tally(["b", "a", "gone"], pods) == CooperativeTally(("a", "gone"), ("b",))


@pytest.mark.parametrize("after, waiting, forced, verdict", [
    (0, ("b",), False, 30.0),          # the window has just begun
    (29, ("b",), False, 1.0),
    (30, ("b",), False, "Deadline"),   # over at the deadline, not a second later
    (45, ("b",), False, "Deadline"),
    (5, (), False, "AllEnded"),        # every runner ended: no need to wait for the deadline
    (45, (), False, "AllEnded"),
    (5, ("b",), True, "Forced"),       # forced: at once, whatever else
    (5, (), True, "Forced"),
])
def test_when_the_window_is_over(after: int, waiting: tuple[str, ...], forced: bool, verdict: Any) -> None:
    deadline = window_deadline(T0, 30)
    assert deadline == T0 + timedelta(seconds=30)
    got = cooperative_wait(T0 + timedelta(seconds=after), deadline, CooperativeTally((), waiting), forced)
    assert got == verdict


@pytest.mark.parametrize("forced, let_go, cooperative, outcome", [
    (False, False, False, "Terminated"),
    (False, False, True, "Cooperative"),
    (False, True, False, "TaskFinished"),
    (True, False, True, "Forced"),
    (True, True, False, "Forced"),
])
def test_a_runners_outcome(forced: bool, let_go: bool, cooperative: bool, outcome: str) -> None:
    assert outcome_of("p", forced=forced, let_go=let_go, cooperative=cooperative) == outcome


def test_a_runner_let_go_is_never_forced_again() -> None:
    t = Termination(forced={"a"}, let_go={"b"})
    assert t.not_forceable == {"a", "b"}


def test_the_window_has_a_step_of_its_own_only_when_asked_for() -> None:
    names = [d.name for d in steps_for("JobCancellation", "Cancel", 30)]
    assert names[names.index("SignalRunners") + 1] == "CooperativeStop"
    assert "CooperativeStop" not in [d.name for d in steps_for("JobCancellation", "Cancel", 0)]
    drain = [d.name for d in steps_for("TaskCancellation", "Drain", 10)]
    assert drain.index("Drain") < drain.index("SignalRunners") < drain.index("CooperativeStop") \
        < drain.index("TerminateRunners")


def test_the_window_counts_in_the_bound_unless_forced() -> None:
    spec = CancellationSpec.model_validate({"jobName": "j", "cooperativeSeconds": 30})
    assert spec_windows(spec) == 30
    assert spec_windows(spec.model_copy(update={"force": True})) == 0
