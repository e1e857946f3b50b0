"""Level-triggered: an operator killed in the middle of TerminateRunners is started again and
finishes the same cancellation without acting twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from hack.localcluster import free_port
from tests.cluster.test_metrics_and_logs import scrape
from tests.support.kube import ClusterInfo, Kubectl, operator_env, wait_for
from tests.support.operators import stop


def start_operator(cluster: ClusterInfo, ns: str, log: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    # every step's Events (not only failures): a step run twice after the takeover would show
    env = {**os.environ, **operator_env(cluster, metrics_port), "NECROCODE_STEP_EVENTS": "all"}
    return subprocess.Popen([sys.executable, "-m", "necrocode.main", "--namespace", ns, "--liveness", ""],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_operator_killed_during_terminate_runners_resumes(kube: Kubectl, cluster: ClusterInfo,
                                                          solo_namespace: str, tmp_path: Path) -> None:
    ns = solo_namespace
    kube.create_job(ns, "job")
    kube.create_runner(ns, "job", "fast", stop="immediate")
    kube.create_task(ns, "job", "fast", "Running", runner="job-fast-runner")
    for t in ("lost1", "lost2"):
        kube.create_runner(ns, "job", t, stop="never")
        kube.create_task(ns, "job", t, "Running", runner=f"job-{t}-runner")
    kube.create_task(ns, "job", "pending", "Pending")
    kube.create_lease(ns, "slot-fast", job="job", task_id="fast", holder="job-fast-runner")
    log = tmp_path / "operator.log"
    first = start_operator(cluster, ns, log)
    try:
        kube.cancel_job(ns, "stop", "job", gracePeriodSeconds=4, escalateAfterSeconds=2)

        def terminating() -> dict[str, Any] | None:
            st = kube.get("jobcancellations", ns, "stop").get("status") or {}
            steps = {s["name"]: s["state"] for s in st.get("steps", [])}
            return st if steps.get("TerminateRunners") == "Running" and \
                st.get("progress", {}).get("runnersTerminated") == 1 else None

        wait_for(terminating, timeout=30, what="TerminateRunners under way")
        stuck = kube.pods(ns, "necrocode.io/role=runner")
        assert len(stuck) == 2 and all(p.metadata.deletion_timestamp for p in stuck)
        deleted_at = {p.metadata.name: p.metadata.deletion_timestamp for p in stuck}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    port = free_port()
    second = start_operator(cluster, ns, log, port)
    try:
        st = kube.wait_phase("jobcancellations", ns, "stop", timeout=60)["status"]
        metrics = wait_for(lambda: scrape(port), timeout=10, what="the second operator's /metrics")
    finally:
        stop(second, log)
    assert st["phase"] == "Completed", (st, log.read_text()[-3000:])
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (3, 3, 2)
    assert (p["tasksCancelled"], p["leasesReleased"]) == (4, 1)
    assert kube.pods(ns, "necrocode.io/job=job") == []
    # the grace the first operator gave was not restarted by the second
    assert set(deleted_at) == {"job-lost1-runner", "job-lost2-runner"}
    # the resumed process counts only what it did: the two forced runners and one final phase
    assert metrics[("necrocode_runners_terminated_total", (("mode", "forced"),))] == 2
    assert metrics.get(("necrocode_runners_terminated_total", (("mode", "graceful"),)), 0) == 0
    assert metrics[("necrocode_cancellation_requests_total", (("kind", "JobCancellation"), ("result", "Completed")))] == 1
    # nothing acted on twice: one event per step transition, one per forced runner
    reasons = Counter(e.reason for e in kube.events_for(ns, "stop"))
    assert reasons["Started"] == 1
    assert reasons["TerminateRunnersStarted"] == 1
    assert reasons["TerminateRunnersSucceeded"] == 1
    assert reasons["RunnerForced"] == 2
    assert reasons["Completed"] == 1
    for t in ("fast", "lost1", "lost2", "pending"):
        assert kube.task(ns, "job", t)["status"]["cancellation"]["cancelledBy"] == "stop"


def test_the_oldest_running_age_goes_on_across_a_restart(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str,
                                                          tmp_path: Path) -> None:
    """necrocode_oldest_running_cancellation_age_seconds counts from the record's status.startedAt:
    the operator that resumes a cancellation reports it as old as it is, older than the process
    itself (NecrocodeCancellationTooLong must not be reset by a restart); 0 once it finished."""
    ns = solo_namespace
    kube.create_job(ns, "job")
    kube.create_runner(ns, "job", "lost", stop="never")
    kube.create_task(ns, "job", "lost", "Running", runner="job-lost-runner")
    log = tmp_path / "operator.log"
    age = "necrocode_oldest_running_cancellation_age_seconds"
    job_age, task_age = (age, (("kind", "JobCancellation"),)), (age, (("kind", "TaskCancellation"),))
    first_port = free_port()
    first = start_operator(cluster, ns, log, first_port)
    try:
        kube.cancel_job(ns, "long", "job", gracePeriodSeconds=600, escalateAfterSeconds=600)

        def waiting() -> dict[str, Any] | None:
            st = kube.get("jobcancellations", ns, "long").get("status") or {}
            steps = {s["name"]: s["state"] for s in st.get("steps", [])}
            return st if steps.get("TerminateRunners") == "Running" else None

        started = datetime.fromisoformat(wait_for(waiting, timeout=30, what="TerminateRunners waiting")["startedAt"])
        m = wait_for(lambda: scrape(first_port), timeout=10, what="the first operator's /metrics")
        assert m[job_age] > 0 and m[task_age] == 0
        assert m[("necrocode_leader", ())] == 1  # no leader election: the one operator acts
        [(build, one)] = [(dict(k[1]), v) for k, v in m.items() if k[0] == "necrocode_build_info"]
        assert one == 1 and set(build) == {"version", "python", "kopf"}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

    second_port = free_port()
    second_start = time.time()
    second = start_operator(cluster, ns, log, second_port)
    try:
        def resumed() -> float | None:
            try:
                value = scrape(second_port).get(job_age, 0.0)
            except OSError:
                return None  # not serving yet
            return value or None

        seen = wait_for(resumed, timeout=30, what="the second operator reporting the resumed cancellation")
        now = time.time()
        # as old as the record says (startedAt has whole seconds), older than the second process
        assert now - started.timestamp() - 1.5 <= seen <= now - started.timestamp() + 0.5, (seen, started)
        assert seen > now - second_start, (seen, now - second_start)
        # the lost runner forced away: the cancellation ends, and nothing runs any more
        kube.core.delete_namespaced_pod("job-lost-runner", ns, grace_period_seconds=0)
        assert kube.wait_phase("jobcancellations", ns, "long", timeout=60)["status"]["phase"] == "Completed"
        wait_for(lambda: scrape(second_port)[job_age] == 0, timeout=10, what="the age back to 0")
    finally:
        stop(second, log)
