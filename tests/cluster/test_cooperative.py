"""The cooperative stop window and "its runner is not forced" (issue 18, items 2 and 4), on the
real control plane with kwok runner pods: a pod labelled necrocode.io/kwok-stop=cooperative plays
a runner that honours the signal (hack/kwok/stages.yaml: phase Succeeded, exit 0, N seconds
after the annotation), one labelled immediate a runner that ignores it until it is deleted; and
the reference runner script (examples/runner/cooperative_runner.py) runs as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import ClusterInfo, Kubectl, wait_for

pytestmark = pytest.mark.usefixtures("operator")
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "runner" / "cooperative_runner.py"


def running_task(kube: Kubectl, ns: str, job: str, tid: str, stop: str, after: int | None = None,
                 grace: int = 30) -> str:
    pod = f"{job}-{tid}-runner"
    kube.create_runner(ns, job, tid, stop=stop, after=after, name=pod, grace=grace)
    kube.create_task(ns, job, tid, "Running", runner=pod)
    return pod


def status(kube: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return kube.get("jobcancellations", ns, name).get("status") or {}


def outcomes(st: dict[str, Any]) -> dict[str, str]:
    return {o["pod"]: o["outcome"] for o in st.get("runnerOutcomes") or []}


def window_started(kube: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return wait_for(lambda: (status(kube, ns, name).get("cooperative") or {}).get("startedAt")
                    and status(kube, ns, name), what="cooperative window recorded")


def test_a_cooperative_runner_stops_in_the_window_the_other_is_deleted_after_it(
        kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "cw")
    coop = running_task(kube, ns, "cw", "coop", "cooperative", after=1)
    deaf = running_task(kube, ns, "cw", "deaf", "immediate")
    kube.cancel_job(ns, "stop-cw", "cw", cooperativeSeconds=15, reason="wrong branch")
    st = window_started(kube, ns, "stop-cw")
    assert st["cooperative"]["deadline"] > st["cooperative"]["startedAt"]
    # the runners that read their task see the signal there too; the task's state is not changed
    task = kube.task(ns, "cw", "deaf")
    assert json.loads(task["metadata"]["annotations"]["necrocode.io/cancel-requested"])["reason"] == "wrong branch"
    assert task["status"]["state"] == "Running"
    wait_for(lambda: kube.core.read_namespaced_pod(coop, ns).status.phase == "Succeeded",
             what="the cooperative runner ended by itself")
    assert kube.core.read_namespaced_pod(deaf, ns).metadata.deletion_timestamp is None, "deleted inside the window"
    st = kube.wait_phase("jobcancellations", ns, "stop-cw", timeout=90)["status"]
    assert st["phase"] == "Completed", st
    assert [s["name"] for s in st["steps"]] == ["Validate", "BlockDispatch", "ClassifyTasks", "SignalRunners",
                                                 "CooperativeStop", "TerminateRunners", "UpdateTaskStates",
                                                 "CleanupResources", "Verify"]
    assert outcomes(st) == {coop: "Cooperative", deaf: "Terminated"}
    p = st["progress"]
    assert (p["runnersCooperative"], p["runnersTerminated"], p["runnersTotal"], p["runnersForced"]) == (1, 2, 2, 0)
    c = st["cooperative"]
    assert c["stopped"] == 1 and c["finishedAt"] >= c["deadline"]
    assert not kube.pods(ns, "necrocode.io/job=cw")
    assert kube.task(ns, "cw", "coop")["status"]["state"] == "Cancelled"


def test_the_window_ends_early_when_every_runner_stopped(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "ce")
    pods = [running_task(kube, ns, "ce", t, "cooperative", after=1) for t in ("a", "b")]
    kube.cancel_job(ns, "stop-ce", "ce", cooperativeSeconds=600)
    st = kube.wait_phase("jobcancellations", ns, "stop-ce", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    c = st["cooperative"]
    assert c["finishedAt"] < c["deadline"] and c["stopped"] == 2
    assert outcomes(st) == {p: "Cooperative" for p in pods}
    assert st["progress"]["runnersCooperative"] == 2 and st["progress"]["runnersTerminated"] == 2


def test_forcing_ends_the_window_at_once(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "cf")
    pod = running_task(kube, ns, "cf", "t", "never")
    kube.cancel_job(ns, "stop-cf", "cf", cooperativeSeconds=3600)
    window_started(kube, ns, "stop-cf")
    kube.custom.patch_namespaced_custom_object("necrocode.io", "v1alpha1", ns, "jobcancellations", "stop-cf",
                                               {"spec": {"force": True}})
    st = kube.wait_phase("jobcancellations", ns, "stop-cf", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    assert st["cooperative"]["finishedAt"] < st["cooperative"]["deadline"]
    assert st["cooperative"]["stopped"] == 0 and outcomes(st) == {pod: "Forced"}


def test_a_dry_run_says_the_window_would_be_given(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "cd")
    running_task(kube, ns, "cd", "t", "cooperative")
    st = kube.wait_phase("jobcancellations", ns, kube.cancel_job(
        ns, "dry-cd", "cd", cooperativeSeconds=45, dryRun=True)["metadata"]["name"])["status"]
    assert "give each runner up to 45s to stop by itself" in st["message"], st["message"]
    assert "necrocode.io/cancel-requested" not in (kube.pods(ns, "necrocode.io/job=cd")[0].metadata.annotations or {})


def test_the_reference_runner_saves_its_work_and_exits_when_signalled(
        kube: Kubectl, cluster: ClusterInfo, namespace: str, tmp_path: Path) -> None:
    """examples/runner/cooperative_runner.py as a real process, its "own pod" a kwok pod: it sees
    the annotation through a watch of that pod, saves its work as an artifact and exits 0."""
    ns = namespace
    kube.create_job(ns, "cr")
    pod = running_task(kube, ns, "cr", "agent", "cooperative", after=5)
    out = (tmp_path / "runner.log").open("w+")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--kubeconfig", str(cluster.kubeconfig),
                             "--pod", pod, "--namespace", ns], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "started; watching" in (tmp_path / "runner.log").read_text(), what="the runner started")
        kube.cancel_job(ns, "stop-cr", "cr", cooperativeSeconds=60, reason="saves its work")
        assert proc.wait(timeout=30) == 0, (tmp_path / "runner.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "runner.log").read_text()
    assert "cancel requested:" in log and f"saved: configmap/{pod}-work" in log, log
    saved = kube.core.read_namespaced_config_map(f"{pod}-work", ns)
    assert saved.metadata.labels == {"necrocode.io/artifact": "true", "necrocode.io/job": "cr",
                                     "necrocode.io/task": "agent"}
    assert saved.data["stopped"] == "cancel requested: saves its work" and int(saved.data["steps"]) >= 0
    st = kube.wait_phase("jobcancellations", ns, "stop-cr", timeout=90)["status"]
    assert st["phase"] == "Completed" and outcomes(st) == {pod: "Cooperative"}, st
    kube.core.read_namespaced_config_map(f"{pod}-work", ns)  # an artifact: kept by the cancellation


def lost_runner_whose_task_finishes(kube: Kubectl, ns: str, job: str) -> str:
    """A runner on a lost node (it never goes by itself), cancelled with grace 3s and escalation
    2s; its task is reported Done while the pod is in its grace period. Returns the pod's name."""
    kube.create_job(ns, job)
    pod = running_task(kube, ns, job, "t", "never", grace=3)
    kube.cancel_job(ns, f"stop-{job}", job, gracePeriodSeconds=3, escalateAfterSeconds=2)
    wait_for(lambda: kube.core.read_namespaced_pod(pod, ns).metadata.deletion_timestamp,
             what="the runner in its grace period")
    kube.patch_status("agenttasks", ns, kube.task(ns, job, "t")["metadata"]["name"], {"state": "Done"})
    return pod


def test_a_runner_whose_task_finished_is_not_forced(kube: Kubectl, namespace: str) -> None:
    """Cancel versus complete: a runner on a lost node (it never goes by itself) whose task is
    reported Done while its pod is in its grace period is let go, never force-deleted; still there
    at the stuck timeout, it is reported Stuck (the cancellation does not wait for it longer)."""
    ns = namespace
    pod = lost_runner_whose_task_finishes(kube, ns, "cn")
    try:
        st = kube.wait_phase("jobcancellations", ns, "stop-cn", timeout=90)["status"]
        assert outcomes(st) == {pod: "Stuck"}, st
        assert st["progress"]["runnersForced"] == 0 and st["progress"]["finishedDuringCancel"] == 1
        assert any("its task finished" in e["message"] for e in st["errors"]), st["errors"]
        assert kube.core.read_namespaced_pod(pod, ns).metadata.deletion_grace_period_seconds == 3, "forced"
        assert kube.task(ns, "cn", "t")["status"]["state"] == "Done"
    finally:
        kube.core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)


def test_a_runner_let_go_that_then_goes_is_counted_task_finished(
        kube: Kubectl, namespace: str, operator_log: Path) -> None:
    """The same, but the lost node comes back once the runner was let go (the test plays its
    kubelet): the runner goes without ever being forced, outcome TaskFinished."""
    ns = namespace
    pod = lost_runner_whose_task_finishes(kube, ns, "cg")
    wait_for(lambda: any("let go with its grace" in line and pod in line
                         for line in operator_log.read_text().splitlines()), interval=0.05, what="the runner let go")
    kube.core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)
    st = kube.wait_phase("jobcancellations", ns, "stop-cg", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    assert outcomes(st) == {pod: "TaskFinished"} and st["progress"]["runnersForced"] == 0
    assert st["progress"]["runnersTerminated"] == 1
