"""Two operator replicas with leader election: only the leader acts; kill it during a slow
cancellation and the standby finishes it, with nothing done twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hack.localcluster import free_port
from tests.cluster.test_metrics_and_logs import scrape
from tests.support.kube import ClusterInfo, Kubectl, operator_env, wait_for
from tests.support.operators import stop


def replica(cluster: ClusterInfo, ns: str, log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    # every step's Events (not only failures): a step run twice after the takeover would show
    env = {**os.environ, **operator_env(cluster, metrics_port), "NECROCODE_STEP_EVENTS": "all"}
    return subprocess.Popen(
        [sys.executable, "-m", "necrocode.main", "--namespace", ns, "--liveness", "", "--leader-elect",
         "--leader-namespace", ns, "--leader-lease-seconds", "6"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def holder(kube: Kubectl, ns: str) -> str | None:
    try:
        return str(kube.coord.read_namespaced_lease("necrocode-cancel-leader", ns).spec.holder_identity or "") or None
    except Exception:
        return None


def test_standby_finishes_when_the_leader_is_killed(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str,
                                                    tmp_path: Path) -> None:
    ns = solo_namespace
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    ports = {"a": free_port(), "b": free_port()}
    a = replica(cluster, ns, logs[0], ports["a"])
    first = wait_for(lambda: holder(kube, ns), timeout=30, what="a leader")
    b = replica(cluster, ns, logs[1], ports["b"])
    procs = {"a": a, "b": b}
    try:
        wait_for(lambda: "standing by" in logs[1].read_text(), timeout=30, what="the second replica standing by")
        assert holder(kube, ns) == first
        kube.create_job(ns, "job")
        for t in ("lost1", "lost2"):
            kube.create_runner(ns, "job", t, stop="never")
            kube.create_task(ns, "job", t, "Running", runner=f"job-{t}-runner")
        kube.create_runner(ns, "job", "fast")
        kube.create_task(ns, "job", "fast", "Running", runner="job-fast-runner")
        kube.cancel_job(ns, "stop", "job", gracePeriodSeconds=8, escalateAfterSeconds=1)

        def terminating() -> dict[str, Any] | None:
            st = kube.get("jobcancellations", ns, "stop").get("status") or {}
            steps = {s["name"]: s["state"] for s in st.get("steps", [])}
            return st if steps.get("TerminateRunners") == "Running" and st["progress"]["runnersTerminated"] == 1 else None

        wait_for(terminating, timeout=30, what="TerminateRunners under way")
        leader = "a" if "leadership acquired" in logs[0].read_text() else "b"
        standby = "b" if leader == "a" else "a"
        # only the leader acts, and only it reports a running cancellation's age; a standby says 0
        on_leader, on_standby = scrape(ports[leader]), scrape(ports[standby])
        age = "necrocode_oldest_running_cancellation_age_seconds"
        assert on_leader[("necrocode_leader", ())] == 1 and on_standby[("necrocode_leader", ())] == 0
        assert on_leader[(age, (("kind", "JobCancellation"),))] > 0
        assert on_standby[(age, (("kind", "JobCancellation"),))] == on_standby[(age, (("kind", "TaskCancellation"),))] == 0
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(timeout=10)
        new = wait_for(lambda: (h := holder(kube, ns)) and h != first and h, timeout=30, what="a new leader")
        assert new
        st = kube.wait_phase("jobcancellations", ns, "stop", timeout=90)["status"]
        metrics = wait_for(lambda: scrape(ports[standby]), timeout=10, what="the new leader's /metrics")
    finally:
        for p, log in zip((a, b), logs, strict=True):
            stop(p, log)
    assert st["phase"] == "Completed", st
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"], p["tasksCancelled"]) == (3, 3, 2, 3)
    # the new leader counts what it did, once: the two forced runners and the final phase
    assert metrics[("necrocode_runners_terminated_total", (("mode", "forced"),))] == 2
    assert metrics.get(("necrocode_runners_terminated_total", (("mode", "graceful"),)), 0) == 0
    assert metrics[("necrocode_cancellation_requests_total", (("kind", "JobCancellation"), ("result", "Completed")))] == 1
    reasons = Counter(e.reason for e in kube.events_for(ns, "stop"))
    assert reasons["Started"] == 1 and reasons["TerminateRunnersStarted"] == 1
    assert reasons["RunnerForced"] == 2 and reasons["Completed"] == 1
    assert "leadership acquired" in logs[1 if standby == "b" else 0].read_text()
