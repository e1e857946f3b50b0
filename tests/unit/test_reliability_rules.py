"""Pure rules behind the reliability guarantees (docs/reliability.md): the one retry policy,
markers of any shape, records told apart by kind and uid, the claim that never locks a job,
and a status that stays small whatever the job."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from necrocode.model import (
    JOB_CANCELLATION,
    TASK_CANCELLATION,
    CancellationStatus,
    Ref,
    RunnerOutcome,
    clip,
)
from necrocode.planning import (
    Claim,
    RetryPolicy,
    changed_by,
    claim_decision,
    foreign_marker,
    marker_is,
    parse_marker,
    task_affected_tasks,
)
from necrocode.terminator import stuck_reason

JC = Ref(JOB_CANCELLATION, "stop", "uid-jc")
TC = Ref(TASK_CANCELLATION, "stop", "uid-tc")


# ----------------------------------------------------------------------------- retry policy
def test_backoff_is_exponential_capped_and_jittered_within_its_half() -> None:
    p = RetryPolicy(attempts=6, base_seconds=0.5, factor=2, max_seconds=3)
    assert [p.delay(a, 0.0) for a in range(1, 6)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert [p.delay(a, 0.999999) for a in range(1, 6)] == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0], abs=1e-5)
    assert p.delay(2, 0.5) == pytest.approx(0.75)


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    p = RetryPolicy(attempts=5, base_seconds=0.5, max_seconds=10)
    assert p.delay(1, 0.0, retry_after=4) == 4
    assert p.delay(1, 0.0, retry_after=600) == 10
    assert p.delay(4, 1.0, retry_after=0.1) == pytest.approx(4.0)  # shorter than the backoff: backoff


def test_the_retry_budget_bounds_every_call() -> None:
    p = RetryPolicy(attempts=5, base_seconds=0.5, max_seconds=30)
    assert p.budget(request_timeout=30) == 5 * 30 + 4 * 30
    # whatever the jitter and Retry-After, the pauses never exceed the budget's share
    assert sum(p.delay(a, 0.999, retry_after=1e6) for a in range(1, p.attempts)) <= (p.attempts - 1) * p.max_seconds


def test_a_broken_watch_is_reopened_after_the_policys_backoff_growing_no_further_than_its_last_attempt() -> None:
    from necrocode.kube import Credentials, Kube, TransientError

    jitter = iter([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.999999, 0.0])
    kube = Kube(Credentials(host="https://127.0.0.1:1", ssl=False, configuration=None),  # type: ignore[arg-type]
                retry=RetryPolicy(attempts=4, base_seconds=0.5, max_seconds=30), jitter=lambda: next(jitter))
    # 1, 2, 3 breaks in a row: the policy's pauses; beyond its attempts the pause stops growing
    assert [kube.reconnect_pause(b) for b in (1, 2, 3, 4, 50)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert kube.reconnect_pause(0) == 0.25  # never no pause at all
    assert kube.reconnect_pause(50) == pytest.approx(4.0, abs=1e-5)  # jittered within the upper half
    # a server that says when to come back is heard (up to the policy's cap)
    assert kube.reconnect_pause(1, TransientError(429, "TooManyRequests", "slow down", {}, retry_after=12)) == 12


# ----------------------------------------------------------------------------- markers
@pytest.mark.parametrize("value", [None, "", "false", "[]", "0", "null", '"text"', "not json at all",
                                   '{"reason": "x"}', '{"by": ""}', '{"by": 7}', "{"])
def test_a_marker_that_is_not_ours_reads_as_no_marker(value: str | None) -> None:
    assert parse_marker(value) is None
    assert not marker_is(parse_marker(value), JC)
    assert not foreign_marker(parse_marker(value), JC, {"uid-other": "jobcancellation/other"})


def test_markers_are_matched_by_uid_and_stale_ones_are_not_foreign() -> None:
    mine = parse_marker(json.dumps({"by": "jobcancellation/stop", "uid": "uid-jc"}))
    legacy_mine = parse_marker(json.dumps({"by": "jobcancellation/stop"}))
    same_name_other_kind = parse_marker(json.dumps({"by": "taskcancellation/stop", "uid": "uid-tc"}))
    recreated = parse_marker(json.dumps({"by": "jobcancellation/stop", "uid": "uid-old"}))
    live = {"uid-tc": "taskcancellation/stop"}
    assert marker_is(mine, JC) and marker_is(legacy_mine, JC)
    assert not marker_is(same_name_other_kind, JC) and not marker_is(recreated, JC)
    assert foreign_marker(same_name_other_kind, JC, live)  # in flight: that request counts the runner
    assert not foreign_marker(same_name_other_kind, JC, {})  # finished or gone: stale, overwrite
    assert not foreign_marker(recreated, JC, live)
    assert parse_marker('{"by": "x", "uid": 5}') == parse_marker('{"by": "x"}')


# ----------------------------------------------------------------------------- records by kind and uid
def task(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "j-a"}, "status": status}


@pytest.mark.parametrize(("status", "jc", "tc"), [
    ({"cancellation": {"cancelledBy": "stop", "cancelledByKind": "JobCancellation", "cancelledByUid": "uid-jc"}},
     True, False),
    ({"cancellation": {"cancelledBy": "stop", "cancelledByKind": "TaskCancellation", "cancelledByUid": "uid-tc"}},
     False, True),
    ({"cancellation": {"cancelledBy": "stop", "cancelledByUid": "uid-old"}}, False, False),  # a recreated name
    ({"cancellation": {"cancelledBy": "stop"}}, True, True),  # written before uids: by name, as then
    ({"cancellation": {"cancelledBy": "other", "cancelledByUid": "uid-jc"}}, False, False),
    ({"blockedBy": "stop", "blockedByUid": "uid-tc"}, False, True),
    ({"blockedBy": "stop"}, False, True),  # only a TaskCancellation blocks
    ({"cancellation": "odd"}, False, False),
    ({}, False, False),
])
def test_a_task_is_attributed_to_exactly_the_request_that_changed_it(status: dict[str, Any], jc: bool,
                                                                    tc: bool) -> None:
    assert changed_by(task(status), JC) is jc
    assert changed_by(task(status), TC) is tc
    assert changed_by({"metadata": {"name": "x"}, "status": "odd"}, JC) is False


def test_a_resumed_task_cancellation_recomputes_its_own_finished_dependents() -> None:
    def t(tid: str, state: str, deps: list[str], status: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"metadata": {"name": f"j-{tid}"}, "spec": {"taskId": tid, "dependsOn": deps},
                "status": {"state": state, **(status or {})}}

    mine = {"cancellation": {"cancelledBy": "stop", "cancelledByKind": "TaskCancellation", "cancelledByUid": "uid-tc"}}
    tasks = [t("a", "Cancelled", [], mine), t("b", "Cancelled", ["a"], mine), t("c", "Done", ["a"]),
             t("d", "Pending", ["b"])]
    affected, _ = task_affected_tasks(tasks, "a", True, "r", TC)
    assert [a.task_id for a in affected] == ["a", "b", "d"]
    fresh, _ = task_affected_tasks(tasks, "a", True, "r")
    assert [a.task_id for a in fresh] == ["a", "d"]


# ----------------------------------------------------------------------------- the claim
def jc(name: str, uid: str, phase: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid}, "status": {"phase": phase} if phase else {}}


@pytest.mark.parametrize(("claim", "claimer", "job_phase", "me", "want"), [
    ((None, None), None, "Running", JC, Claim.FREE),
    ((None, None), None, "Succeeded", JC, Claim.FINISHED),
    (("stop", "uid-jc"), None, "Cancelling", JC, Claim.MINE),
    (("stop", None), None, "Cancelling", JC, Claim.MINE),  # a claim written before uids
    (("other", "u1"), jc("other", "u1", "Running"), "Cancelling", JC, Claim.DUPLICATE),
    (("other", "u1"), jc("other", "u1", None), "Running", JC, Claim.DUPLICATE),  # not started yet
    (("other", "u1"), jc("other", "u1", "Completed"), "Cancelled", JC, Claim.DUPLICATE),
    (("other", "u1"), jc("other", "u1", "Failed"), "Cancelling", JC, Claim.TAKE),
    (("other", "u1"), jc("other", "u1", "PartiallyCompleted"), "Cancelled", JC, Claim.TAKE),
    (("other", "u1"), jc("other", "u1", "Failed"), "Succeeded", JC, Claim.FINISHED),
    (("other", "u1"), None, "Cancelling", JC, Claim.TAKE),  # deleted while it ran
    (("other", "u1"), None, "Cancelled", JC, Claim.FINISHED),  # finished, then its record expired
    (("other", "u1"), jc("other", "u2", "Running"), "Cancelling", JC, Claim.TAKE),  # recreated name
    (("other", "u1"), jc("other", "u1", "Rejected"), "Running", JC, Claim.FREE),
    (("stop", "uid-jc"), jc("stop", "uid-jc", "Running"), "Cancelling", TC, Claim.DUPLICATE),  # same name, other kind
    (("stop", "uid-old"), jc("stop", "uid-jc", "Running"), "Cancelling", JC, Claim.TAKE),
])
def test_no_request_locks_a_job(claim: tuple[str | None, str | None], claimer: dict[str, Any] | None,
                                job_phase: str, me: Ref, want: Claim) -> None:
    assert claim_decision(me, claim[0], claim[1], claimer, job_phase) == want


# ----------------------------------------------------------------------------- bounded status
def test_the_status_of_5000_stuck_runners_with_long_finalizers_stays_small() -> None:
    st = CancellationStatus()
    st.bound(100)
    finalizers = [f"test.necrocode.io/{'f' * 42}-{i}" for i in range(8)]
    pod = {"metadata": {"name": "p", "finalizers": finalizers}}
    for i in range(5000):
        st.add_error("TerminateRunners", f"pod/runner-{i:05d}-{'x' * 200}", stuck_reason(pod, None, 0) * 10)
        st.runner_outcomes.append(RunnerOutcome(pod=f"runner-{i}", outcome="Stuck"))
    st.message = "m" * 100_000
    st.step("TerminateRunners").message = "s" * 100_000
    body = st.dump()
    assert len(body["errors"]) == 100 and body["errorsTotal"] == 5000
    assert len(body["runnerOutcomes"]) == 100
    assert len(body["message"]) <= 1024 and all(len(e["message"]) <= 1024 for e in body["errors"])
    assert len(orjson.dumps(body)) < 256 * 1024
    st.add_error("TerminateRunners", "pod/runner-00001-" + "x" * 200, "again")  # known: not counted twice
    assert st.dump()["errorsTotal"] == 5000
    assert "pod/runner-04999-" + "x" * 200 in st.reported()  # beyond the list, still known (Verify skips it)


def test_a_resumed_status_keeps_its_error_total() -> None:
    st = CancellationStatus.model_validate({"errors": [{"step": "s", "object": "o", "message": "m"}],
                                            "errorsTotal": 250})
    st.bound(100)
    st.add_error("s", "o", "m2")
    st.add_error("s", "p", "m")
    assert st.dump()["errorsTotal"] == 251


def test_stuck_reasons_name_the_api_answer_and_stay_short() -> None:
    assert stuck_reason({}, "403 Forbidden: denied by policy", 7) == "not deleted: 403 Forbidden: denied by policy (7 attempt(s))"
    long = stuck_reason({"metadata": {"finalizers": ["x" * 300] * 50}}, None, 0)
    assert len(long) <= 512 and "and 47 more" in long
    assert clip("a" * 5000).endswith("(truncated)") and len(clip("a" * 5000)) == 1024


def test_a_step_run_again_reports_only_its_latest_errors() -> None:
    st = CancellationStatus()
    st.bound(100)
    st.add_error("CleanupResources", "lease/a", "reset")
    st.add_error("TerminateRunners", "pod/p", "stuck")
    st.clear_errors("CleanupResources")
    body = st.dump()
    assert [e["object"] for e in body["errors"]] == ["pod/p"] and body["errorsTotal"] == 1
    st.clear_errors("TerminateRunners")
    assert "errorsTotal" not in st.dump() and st.reported() == set()
