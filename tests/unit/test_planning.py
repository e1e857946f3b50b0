"""Pure planning logic: classification, cascade, escalation deadlines, retry schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from necrocode.model import BLOCKED_DISPATCH, CancellationStatus, Phase
from necrocode.planning import (
    RetryPolicy,
    VerifyFindings,
    annotates,
    classify_tasks,
    compute_cascade,
    dispatch_blocked,
    earlier_task_cancellations,
    escalation_delay,
    final_phase,
    job_affected_tasks,
    next_wakeup,
    phase_conditions,
    runner_clock,
    runner_summary,
    task_affected_tasks,
)

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def task(tid: str, state: str | None = "Pending", deps: list[str] | None = None, runner: str | None = None
         ) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if state:
        status["state"] = state
    if runner:
        status["runner"] = runner
    return {"metadata": {"name": f"job-{tid}", "labels": {"necrocode.io/task": tid}},
            "spec": {"taskId": tid, "dependsOn": deps or []}, "status": status}


# ----------------------------------------------------------------------------- classification
def test_classify_splits_running_pending_and_finished() -> None:
    tasks = [task("a", "Running", runner="pa"), task("b", "Pending"), task("c", "Ready"), task("d", "Blocked"),
             task("e", "Done"), task("f", "Failed"), task("g", "Cancelled"), task("h", None),
             task("i", "Ready", runner="pi")]
    c = classify_tasks(tasks)
    assert c.running == ("job-a", "job-i")
    assert c.pending == ("job-b", "job-c", "job-d", "job-h")
    assert c.finished == ("job-e", "job-f", "job-g")


def test_job_affected_tasks_leave_finished_ones_alone() -> None:
    out = job_affected_tasks([task("a", "Running", runner="pa"), task("b", "Done"), task("c", "Pending")], "stop")
    assert [(a.task_id, a.before, a.after, a.runner) for a in out] == [
        ("a", "Running", "Cancelled", "pa"), ("c", "Pending", "Cancelled", None)]


# ----------------------------------------------------------------------------- cascade
def test_cascade_of_a_chain() -> None:
    c = compute_cascade("a", {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]})
    assert c.dependents == ("b", "c", "d")
    assert not c.warnings


def test_cascade_of_a_diamond_visits_each_once() -> None:
    c = compute_cascade("a", {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "x": []})
    assert c.dependents == ("b", "c", "d")


def test_cascade_from_the_middle_leaves_upstream_alone() -> None:
    c = compute_cascade("b", {"a": [], "b": ["a"], "c": ["b"], "d": ["a"]})
    assert c.dependents == ("c",)


def test_cascade_tolerates_a_cycle_and_reports_it() -> None:
    c = compute_cascade("a", {"a": ["c"], "b": ["a"], "c": ["b"]})
    assert c.dependents == ("b", "c")
    assert c.cycles
    assert any("cycle" in w for w in c.warnings)


def test_cascade_reports_a_cycle_among_dependents() -> None:
    c = compute_cascade("a", {"a": [], "b": ["a", "c"], "c": ["b"]})
    assert c.dependents == ("b", "c")
    assert set(c.cycles) == {"b", "c"}


def test_cascade_reports_dangling_references() -> None:
    c = compute_cascade("a", {"a": ["ghost"], "b": ["a"]})
    assert c.dependents == ("b",)
    assert c.dangling == ("a",)
    assert any("does not exist" in w for w in c.warnings)


def test_cascade_of_a_long_chain_is_fast_and_complete() -> None:
    n = 5000
    graph = {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(n)}
    c = compute_cascade("t0", graph)
    assert len(c.dependents) == n - 1
    assert not c.cycles


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(min_value=1, max_value=25))
    names = [f"t{i}" for i in range(n)]
    graph: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        graph[name] = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
    return graph


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_cascade_property_dependents_closed_and_nothing_else(graph: dict[str, list[str]], data: st.DataObject) -> None:
    root = data.draw(st.sampled_from(sorted(graph)))
    c = compute_cascade(root, graph)
    cancelled = {root, *c.dependents}
    # every cancelled task's dependents are cancelled
    for t, needs in graph.items():
        if any(n in cancelled for n in needs):
            assert t in cancelled
    # nothing outside the transitive dependents is touched: each one really depends on root
    for t in c.dependents:
        frontier, seen = [t], set()
        found = False
        while frontier:
            x = frontier.pop()
            if x == root:
                found = True
                break
            if x not in seen:
                seen.add(x)
                frontier.extend(graph[x])
        assert found, t


def test_task_affected_tasks_cascade_and_no_cascade() -> None:
    tasks = [task("a", "Running", runner="pa"), task("b", "Pending", ["a"]), task("c", "Done", ["a"]),
             task("d", "Ready", ["b"]), task("e", "Pending")]
    out, _ = task_affected_tasks(tasks, "a", True, "stop it")
    assert [(a.task_id, a.after) for a in out] == [("a", "Cancelled"), ("b", "Cancelled"), ("d", "Cancelled")]
    assert out[1].reason == "dependency a cancelled"
    out, _ = task_affected_tasks(tasks, "a", False, "stop it")
    assert [(a.task_id, a.after) for a in out] == [("a", "Cancelled"), ("b", "Blocked"), ("d", "Blocked")]


# ----------------------------------------------------------------------------- escalation
def pod(deleted_at: datetime | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if deleted_at:
        meta["deletionTimestamp"] = deleted_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": meta}


def test_escalation_is_due_grace_plus_escalate_after() -> None:
    # deleted at T0 with 30 s grace -> deletionTimestamp T0+30; escalate 10 s later
    clock = runner_clock(pod(T0 + timedelta(seconds=30)), 10)
    assert escalation_delay(clock, T0) == 40
    assert escalation_delay(clock, T0 + timedelta(seconds=39)) == 1
    assert escalation_delay(clock, T0 + timedelta(seconds=40)) == 0
    assert escalation_delay(clock, T0 + timedelta(seconds=400)) == 0


def test_escalation_of_a_pod_not_deleted_yet_is_unknown() -> None:
    assert escalation_delay(runner_clock(pod(None), 10), T0) is None


def test_next_wakeup_is_the_nearest_deadline_under_a_ceiling() -> None:
    assert next_wakeup([None, 12.0, 3.5], ceiling=5.0) == 3.5
    assert next_wakeup([None, 12.0], ceiling=5.0) == 5.0
    assert next_wakeup([], ceiling=5.0) == 5.0


# ----------------------------------------------------------------------------- retries / outcome
def test_retry_schedule_is_exponential_and_capped() -> None:
    assert RetryPolicy(attempts=5, base_seconds=0.5, factor=2, max_seconds=3).delays() == [0.5, 1.0, 2.0, 3.0]
    assert RetryPolicy(attempts=1).delays() == []


def test_final_phase() -> None:
    assert final_phase(0, False) == Phase.COMPLETED
    assert final_phase(2, False) == Phase.PARTIALLY_COMPLETED
    assert final_phase(0, True) == Phase.FAILED


def conditions(phase: Phase) -> dict[str, tuple[str, str]]:
    return {t: (status, reason) for t, status, reason, _ in phase_conditions(phase, "m")}


@pytest.mark.parametrize("phase", [Phase.PENDING, Phase.RUNNING])
def test_while_at_work_it_is_running_and_neither_succeeded_nor_failed(phase: Phase) -> None:
    assert conditions(phase) == {"Running": ("True", "InProgress"), "Succeeded": ("Unknown", "InProgress"),
                                 "Complete": ("False", "InProgress")}


@pytest.mark.parametrize(("phase", "succeeded"), [
    (Phase.COMPLETED, "True"),
    # kubectl wait --for=condition=Complete once said "done" for these too: Succeeded tells them apart
    (Phase.PARTIALLY_COMPLETED, "False"), (Phase.FAILED, "False"), (Phase.REJECTED, "False"),
])
def test_once_finished_succeeded_says_whether_it_did_and_complete_only_that_it_ended(phase: Phase,
                                                                                     succeeded: str) -> None:
    assert conditions(phase) == {"Running": ("False", phase.value), "Succeeded": (succeeded, phase.value),
                                 "Complete": ("True", phase.value)}
    assert {m for *_, m in phase_conditions(phase, "why")} == {"why"}


def test_conditions_carry_the_generation_and_move_their_transition_time_only_on_a_change() -> None:
    st = CancellationStatus(observedGeneration=1)
    for c in phase_conditions(Phase.RUNNING):
        st.set_condition(*c)
    running = {c.type: c for c in st.conditions}["Running"]
    assert running.observed_generation == 1 and running.last_transition_time
    running.last_transition_time = "2000-01-01T00:00:00Z"  # so a change is visible
    st.observed_generation = 2  # spec.force turned on
    st.set_condition("Running", "True", "InProgress", "still")
    assert (running.observed_generation, running.last_transition_time) == (2, "2000-01-01T00:00:00Z")
    for c in phase_conditions(Phase.REJECTED, "AgentJob 'x' not found"):
        st.set_condition(*c)
    by_type = {c.type: c for c in st.conditions}
    assert by_type["Running"].last_transition_time != "2000-01-01T00:00:00Z"
    assert (by_type["Succeeded"].status, by_type["Succeeded"].reason) == ("False", "Rejected")
    assert {c.observed_generation for c in st.conditions} == {2}
    assert st.dump()["conditions"][0]["observedGeneration"] == 2


def test_verify_findings_describe_what_remains() -> None:
    f = VerifyFindings(runner_pods=["p1"], held_leases=["l1"], live_tasks=["t1"], job_phase="Running")
    assert not f.clean
    assert [o for o, _ in f.describe()] == ["pod/p1", "lease/l1", "agenttask/t1", "agentjob"]
    assert VerifyFindings().clean


def test_runner_summary() -> None:
    assert runner_summary(3, 5, 0) == "3/5"
    assert runner_summary(5, 5, 2) == "5/5 (2 forced)"


def test_a_job_cancellation_defers_only_to_earlier_task_cancellations_in_flight() -> None:
    def tc(name: str, created: datetime, job: str = "j", phase: str | None = "Running", dry: bool = False
           ) -> dict[str, Any]:
        return {"metadata": {"name": name, "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "spec": {"jobName": job, "taskId": "a", "dryRun": dry}, "status": {"phase": phase} if phase else {}}

    me = (T0 + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    items = [
        tc("earlier", T0),                                    # in flight, earlier: wait for it
        tc("not-started", T0, phase=None),                    # not picked up yet: wait for it too
        tc("same-second", T0 + timedelta(seconds=10)),        # whole-second timestamps: counts as earlier
        tc("later", T0 + timedelta(seconds=11)),              # after us: it will find the job claimed
        tc("done", T0, phase="Completed"),
        tc("rejected", T0, phase="Rejected"),
        tc("other-job", T0, job="k"),
        tc("what-if", T0, dry=True),
        tc("jc", T0),                                         # named like the JobCancellation: another request
    ]
    assert earlier_task_cancellations(items, "j", me) == ["earlier", "jc", "not-started", "same-second"]
    assert earlier_task_cancellations(items, "j", None) == []
    assert earlier_task_cancellations([], "j", me) == []


# ----------------------------------------------------------------------------- who gets the annotation
def _runner(labels: dict[str, str] | None) -> dict[str, Any]:
    return {"metadata": {"name": "j-t-runner", "labels": labels} if labels is not None else {"name": "j-t-runner"}}


@pytest.mark.parametrize(("kind", "cooperative", "contested", "labels", "annotated"), [
    ("JobCancellation", 0, False, {}, False),                                   # the graceful delete is the signal
    ("JobCancellation", 0, False, None, False),
    ("JobCancellation", 0, False, {"necrocode.io/signal": "annotation"}, True),  # opted in
    ("JobCancellation", 0, False, {"necrocode.io/signal": "sigterm"}, False),    # anything else: not
    ("JobCancellation", 0, False, {"necrocode.io/signal": ""}, False),
    ("JobCancellation", 30, False, {}, True),                                   # a window to read it in
    ("JobCancellation", 0, True, {}, True),                                     # the marker arbitrates
    ("TaskCancellation", 0, False, {}, True),
])
def test_only_runners_that_can_read_the_signal_get_the_annotation(
        kind: str, cooperative: int, contested: bool, labels: dict[str, str] | None, annotated: bool) -> None:
    assert annotates(kind, cooperative, contested, _runner(labels)) is annotated


def test_a_runner_with_odd_metadata_is_not_annotated() -> None:
    assert annotates("JobCancellation", 0, False, {"metadata": {"labels": ["necrocode.io/signal"]}}) is False
    assert annotates("JobCancellation", 0, False, {"metadata": None}) is False


@pytest.mark.parametrize(("labels", "spec", "blocked"), [
    ({"necrocode.io/dispatch-blocked": "true"}, {"dispatch": {"blocked": True}}, True),
    # one mark alone: BlockDispatch writes both (the admission policy reads the label, the dispatcher the field)
    ({"necrocode.io/dispatch-blocked": "true"}, {"dispatch": {"blocked": False}}, False),
    ({}, {"dispatch": {"blocked": True}}, False),
    ({"necrocode.io/dispatch-blocked": "false"}, {"dispatch": {"blocked": True}}, False),
    # written by someone else: anything may be there
    ({"necrocode.io/dispatch-blocked": "true"}, {"dispatch": {"blocked": "true"}}, False),
    (None, None, False),
    ({"necrocode.io/dispatch-blocked": "true"}, {"dispatch": None}, False),
    ({"necrocode.io/dispatch-blocked": "true"}, {"dispatch": "blocked"}, False),
    ({"necrocode.io/dispatch-blocked": "true"}, "blocked", False),
])
def test_dispatch_is_blocked_only_with_both_marks(labels: dict[str, str] | None, spec: object,
                                                  blocked: bool) -> None:
    job = {"metadata": {"name": "j", "labels": labels}, "spec": spec}
    assert dispatch_blocked(job) is blocked
    assert dispatch_blocked({**job, "metadata": {**job["metadata"], **BLOCKED_DISPATCH["metadata"]},
                             "spec": BLOCKED_DISPATCH["spec"]}) is True
