"""Mode Drain and cancel-versus-complete (issue 18, items 1 and 4), on the real control plane
with kwok runner pods. The tests play the runners: a task "finishes" when the test writes Done
to its status, as a runner reporting its result does."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.support.kube import Kubectl, absent, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def running_task(kube: Kubectl, ns: str, job: str, tid: str, stop: str = "immediate") -> str:
    pod = f"{job}-{tid}-runner"
    kube.create_runner(ns, job, tid, stop=stop, name=pod)
    kube.create_task(ns, job, tid, "Running", runner=pod)
    return pod


def finish(kube: Kubectl, ns: str, job: str, tid: str, state: str = "Done") -> None:
    """What a runner does when its work is done: it reports the task's end state."""
    name = kube.task(ns, job, tid)["metadata"]["name"]
    kube.patch_status("agenttasks", ns, name, {"state": state})


def status(kube: Kubectl, ns: str, name: str, plural: str = "jobcancellations") -> dict[str, Any]:
    return kube.get(plural, ns, name).get("status") or {}


def drain_started(kube: Kubectl, ns: str, name: str, plural: str = "jobcancellations") -> dict[str, Any]:
    return wait_for(lambda: (status(kube, ns, name, plural).get("drain") or {}).get("startedAt")
                    and status(kube, ns, name, plural), what="drain window recorded")


def test_drain_lets_running_tasks_finish_and_cancels_the_rest_at_once(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "dj")
    running_task(kube, ns, "dj", "a")
    running_task(kube, ns, "dj", "b")
    kube.create_task(ns, "dj", "p", "Pending", depends_on=["a"])
    kube.create_task(ns, "dj", "r", "Ready")
    kube.create_task(ns, "dj", "old", "Done")
    kube.cancel_job(ns, "drain-dj", "dj", mode="Drain", drainDeadlineSeconds=300, reason="release freeze")

    st = drain_started(kube, ns, "drain-dj")
    assert st["drain"]["runningAtStart"] == 2 and st["drain"]["deadline"] > st["drain"]["startedAt"]
    # dispatch blocked and the tasks not yet running cancelled at once; the running ones go on
    assert kube.get("agentjobs", ns, "dj")["spec"]["dispatch"]["blocked"] is True
    wait_for(lambda: kube.task(ns, "dj", "p")["status"]["state"] == "Cancelled", what="pending cancelled")
    assert kube.task(ns, "dj", "r")["status"]["state"] == "Cancelled"
    assert kube.task(ns, "dj", "a")["status"]["state"] == "Running"
    assert [s["name"] for s in st["steps"]] == ["Validate", "BlockDispatch", "ClassifyTasks", "Drain", "SignalRunners",
                                                 "TerminateRunners", "UpdateTaskStates", "CleanupResources", "Verify"]
    assert all("necrocode.io/cancel-requested" not in (p.metadata.annotations or {})
               for p in kube.pods(ns, "necrocode.io/job=dj")), "runners signalled while the drain lets them work"

    finish(kube, ns, "dj", "a", "Done")
    wait_for(lambda: status(kube, ns, "drain-dj")["drain"].get("stillRunning") == 1, what="one left running")
    finish(kube, ns, "dj", "b", "Failed")
    done = kube.wait_phase("jobcancellations", ns, "drain-dj")
    st = done["status"]
    assert st["phase"] == "Completed", st
    assert st["drain"]["endedBy"] == "AllFinished" and st["drain"]["finishedInWindow"] == 2
    assert st["drain"]["stillRunning"] == 0
    assert st["progress"]["tasksFinishedInDrain"] == 2
    # cancel versus complete: what finished keeps its real end state and is counted as such
    assert kube.task(ns, "dj", "a")["status"]["state"] == "Done"
    assert kube.task(ns, "dj", "b")["status"]["state"] == "Failed"
    assert st["progress"]["finishedDuringCancel"] == 2 and st["progress"]["finishedBeforeCancel"] == 1
    assert st["progress"]["tasksCancelled"] == 2
    # the runners of finished tasks are still cleaned up, gracefully
    wait_for(lambda: not kube.pods(ns, "necrocode.io/job=dj"), what="runner pods gone")
    assert st["progress"]["runnersForced"] == 0
    reasons = {e.reason for e in kube.events_for(ns, "drain-dj")}
    assert {"Draining", "Drained"} <= reasons


def test_what_still_runs_at_the_deadline_is_cancelled_as_in_mode_cancel(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "dl")
    pod = running_task(kube, ns, "dl", "slow")
    running_task(kube, ns, "dl", "quick")
    kube.cancel_job(ns, "drain-dl", "dl", mode="Drain", drainDeadlineSeconds=3, gracePeriodSeconds=1,
                    escalateAfterSeconds=1)
    drain_started(kube, ns, "drain-dl")
    finish(kube, ns, "dl", "quick")
    st = kube.wait_phase("jobcancellations", ns, "drain-dl")["status"]
    assert st["phase"] == "Completed", st
    assert st["drain"]["endedBy"] == "Deadline"
    assert (st["drain"]["finishedInWindow"], st["drain"]["stillRunning"]) == (1, 1)
    assert kube.task(ns, "dl", "slow")["status"]["state"] == "Cancelled"
    assert kube.task(ns, "dl", "quick")["status"]["state"] == "Done"
    assert absent(lambda: kube.core.read_namespaced_pod(pod, ns))


def test_forcing_a_drain_ends_it_at_once(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "df")
    running_task(kube, ns, "df", "t")
    kube.cancel_job(ns, "drain-df", "df", mode="Drain", drainDeadlineSeconds=3600)
    drain_started(kube, ns, "drain-df")
    kube.custom.patch_namespaced_custom_object("necrocode.io", "v1alpha1", ns, "jobcancellations", "drain-df",
                                               {"spec": {"force": True}})
    st = kube.wait_phase("jobcancellations", ns, "drain-df", timeout=60)["status"]
    assert st["drain"]["endedBy"] == "Forced" and st["drain"]["stillRunning"] == 1
    assert kube.task(ns, "df", "t")["status"]["state"] == "Cancelled"


def test_a_task_cancellation_drains_its_own_tasks_only(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "tj")
    running_task(kube, ns, "tj", "root")
    kube.create_task(ns, "tj", "child", "Pending", depends_on=["root"])
    running_task(kube, ns, "tj", "other")
    kube.cancel_task(ns, "drain-root", "tj", "root", mode="Drain", drainDeadlineSeconds=300)
    st = drain_started(kube, ns, "drain-root", "taskcancellations")
    assert st["drain"]["runningAtStart"] == 1
    wait_for(lambda: kube.task(ns, "tj", "child")["status"]["state"] == "Cancelled", what="dependent cancelled")
    finish(kube, ns, "tj", "root")
    st = kube.wait_phase("taskcancellations", ns, "drain-root")["status"]
    assert st["phase"] == "Completed" and st["drain"]["endedBy"] == "AllFinished", st
    assert kube.task(ns, "tj", "root")["status"]["state"] == "Done"
    assert kube.task(ns, "tj", "other")["status"]["state"] == "Running"  # not this request's
    assert st["progress"]["finishedDuringCancel"] == 1


def test_a_dry_run_shows_what_the_drain_would_do(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "dd")
    running_task(kube, ns, "dd", "run")
    kube.create_task(ns, "dd", "wait", "Pending")
    st = kube.wait_phase("jobcancellations", ns, kube.cancel_job(
        ns, "dry-dd", "dd", mode="Drain", drainDeadlineSeconds=120, dryRun=True)["metadata"]["name"])["status"]
    plan = st["plan"]
    assert plan["drainTasks"] == [kube.task(ns, "dd", "run")["metadata"]["name"]]
    assert plan["cancelledAtOnce"] == [kube.task(ns, "dd", "wait")["metadata"]["name"]]
    assert "let 1 running task(s) finish for up to 120s" in st["message"]
    assert kube.task(ns, "dd", "run")["status"]["state"] == "Running"  # nothing changed


def test_a_task_that_finishes_during_the_cancellation_keeps_its_end_state_and_results(
        kube: Kubectl, namespace: str) -> None:
    """Cancel versus complete, mode Cancel: a runner finishes its task while its pod is in its
    grace period. The task stays Done, its results stay although preserveArtifacts is false, and
    the cancellation counts it; the cancelled task's results go."""
    ns = namespace
    kube.create_job(ns, "cc")
    running_task(kube, ns, "cc", "finisher", stop="never")  # a pod that waits to be let go
    running_task(kube, ns, "cc", "stopped")
    kube.create_configmap(ns, "cc-finisher-result", "cc", "artifact", task_id="finisher")
    kube.create_configmap(ns, "cc-stopped-result", "cc", "artifact", task_id="stopped")
    kube.cancel_job(ns, "stop-cc", "cc", preserveArtifacts=False, gracePeriodSeconds=30, escalateAfterSeconds=30)
    wait_for(lambda: kube.core.read_namespaced_pod("cc-finisher-runner", ns).metadata.deletion_timestamp,
             what="the finisher's pod in its grace period")
    finish(kube, ns, "cc", "finisher")
    # its runner exits after reporting (the test plays its kubelet: the pod goes once its task is Done)
    kube.core.delete_namespaced_pod("cc-finisher-runner", ns, grace_period_seconds=0)
    st = kube.wait_phase("jobcancellations", ns, "stop-cc", timeout=90)["status"]
    assert st["phase"] == "Completed", st
    assert kube.task(ns, "cc", "finisher")["status"]["state"] == "Done"
    assert kube.task(ns, "cc", "stopped")["status"]["state"] == "Cancelled"
    assert st["progress"]["finishedDuringCancel"] == 1
    kube.core.read_namespaced_config_map("cc-finisher-result", ns)  # kept
    with pytest.raises(ApiException) as gone:
        kube.core.read_namespaced_config_map("cc-stopped-result", ns)
    assert gone.value.status == 404
    assert "configmap/cc-finisher-result" in st["cleanup"]["preserved"]
