"""After real cancellations, /metrics moved by exactly the expected amounts, and the operator's
log lines are JSON with the required fields. Also: a runner that even force cannot remove (a
finalizer that never clears) is reported as an error, not waited on forever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.kube import Kubectl
from tests.support.metrics import Samples, scrape

pytestmark = pytest.mark.usefixtures("operator")

def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_move_by_exactly_what_happened(kube: Kubectl, namespace: str, metrics_port: int) -> None:
    ns = namespace
    kube.create_job(ns, "mjob")
    for t in ("a", "b"):
        kube.create_runner(ns, "mjob", t)
        kube.create_task(ns, "mjob", t, "Running", runner=f"mjob-{t}-runner")
    kube.create_runner(ns, "mjob", "lost", stop="never")
    kube.create_task(ns, "mjob", "lost", "Running", runner="mjob-lost-runner")
    before = scrape(metrics_port)
    kube.cancel_job(ns, "m1", "mjob", gracePeriodSeconds=1, escalateAfterSeconds=1)
    kube.cancel_job(ns, "m2", "ghost")
    assert kube.wait_phase("jobcancellations", ns, "m1", timeout=60)["status"]["phase"] == "Completed"
    assert kube.wait_phase("jobcancellations", ns, "m2", timeout=60)["status"]["phase"] == "Rejected"
    after = scrape(metrics_port)
    assert delta(before, after, "necrocode_runners_terminated_total", mode="graceful") == 2
    assert delta(before, after, "necrocode_runners_terminated_total", mode="forced") == 1
    assert delta(before, after, "necrocode_cancellation_requests_total", kind="JobCancellation", result="Completed") == 1
    assert delta(before, after, "necrocode_cancellation_requests_total", kind="JobCancellation", result="Rejected") == 1
    assert delta(before, after, "necrocode_cancellation_duration_seconds_count", kind="JobCancellation") == 2
    assert delta(before, after, "necrocode_cancellation_step_duration_seconds_count",
                 kind="JobCancellation", step="TerminateRunners") == 1
    # a rejected request is the user's mistake, not a failed step
    assert not any(k[0] == "necrocode_cancellation_failures_total" and v != before.get(k, 0.0)
                   for k, v in after.items())
    assert after[("necrocode_cancellations_in_progress", (("kind", "JobCancellation"),))] == 0


def test_a_runner_stuck_on_a_finalizer_is_an_error_not_a_hang(kube: Kubectl, namespace: str,
                                                              metrics_port: int) -> None:
    ns = namespace
    kube.create_job(ns, "sjob")
    kube.create_runner(ns, "sjob", "t", finalizers=["test.necrocode.io/never"])
    kube.create_task(ns, "sjob", "t", "Running", runner="sjob-t-runner")
    before = scrape(metrics_port)
    try:
        kube.cancel_job(ns, "s1", "sjob", gracePeriodSeconds=1, escalateAfterSeconds=1)
        st = kube.wait_phase("jobcancellations", ns, "s1", timeout=60)["status"]
        assert st["phase"] == "PartiallyCompleted", st
        steps = {s["name"]: s for s in st["steps"]}
        assert steps["TerminateRunners"]["state"] == "Failed"
        assert "1 stuck" in steps["TerminateRunners"]["message"]
        [err] = [e for e in st["errors"] if e["object"] == "pod/sjob-t-runner"]
        assert "finalizers: test.necrocode.io/never" in err["message"]
        assert {o["pod"]: o["outcome"] for o in st["runnerOutcomes"]} == {"sjob-t-runner": "Stuck"}
        assert kube.task(ns, "sjob", "t")["status"]["state"] == "Cancelled"  # the rest still happened
        after = scrape(metrics_port)
        assert delta(before, after, "necrocode_termination_timeouts_total") == 1
        assert delta(before, after, "necrocode_cancellation_failures_total",
                     kind="JobCancellation", step="TerminateRunners") == 1
        assert delta(before, after, "necrocode_cancellation_requests_total",
                     kind="JobCancellation", result="PartiallyCompleted") == 1
    finally:
        kube.core.patch_namespaced_pod("sjob-t-runner", ns, {"metadata": {"finalizers": None}})


def test_log_lines_are_json_with_the_required_fields(kube: Kubectl, namespace: str, operator_log: Path) -> None:
    kube.create_job(namespace, "ljob")
    kube.create_runner(namespace, "ljob", "t")
    kube.create_task(namespace, "ljob", "t", "Running", runner="ljob-t-runner")
    kube.cancel_job(namespace, "l1", "ljob")
    kube.wait_phase("jobcancellations", namespace, "l1")
    lines = [json.loads(line) for line in operator_log.read_text().splitlines() if line.strip()]
    assert lines, "the operator wrote no log line"
    for rec in lines:
        for key in ("ts", "level", "event", "cancellation", "job", "task", "runner", "step", "duration"):
            assert key in rec, (key, rec)
    events = {r["event"] for r in lines}
    assert {"cancellation started", "step started", "step finished", "runner deleted", "runner gone",
            "task state changed", "cancellation finished"} <= events
    deleted = [r for r in lines if r["event"] == "runner deleted"]
    assert all(r["runner"] and r["job"] and r["step"] == "TerminateRunners" and r["answer"] for r in deleted)
    finished = [r for r in lines if r["event"] == "step finished"]
    assert all(isinstance(r["duration"], float) and r["step"] for r in finished)
