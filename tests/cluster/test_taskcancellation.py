"""TaskCancellation on the real control plane: cascade through spec.dependsOn, no-cascade
blocking, rejections, cycles, dry runs, and racing a JobCancellation of the same job."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.kube import Kubectl, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def states(kube: Kubectl, ns: str, job: str, ids: list[str]) -> dict[str, str]:
    return {t: kube.task(ns, job, t)["status"]["state"] for t in ids}


def chain(kube: Kubectl, ns: str, job: str = "job") -> None:
    """a (running) <- b (running, an odd but possible dependent) <- c (pending) <- d (ready); x is unrelated."""
    kube.create_job(ns, job)
    for t, state, deps in (("a", "Running", []), ("b", "Running", ["a"]), ("c", "Pending", ["b"]),
                           ("d", "Ready", ["c"]), ("x", "Running", [])):
        runner = None
        if state == "Running":
            runner = f"{job}-{t}-runner"
            kube.create_runner(ns, job, t, name=runner)
            kube.create_lease(ns, f"{job}-slot-{t}", job=job, task_id=t, holder=runner)
        kube.create_task(ns, job, t, state, depends_on=deps, runner=runner)
    kube.create_configmap(ns, f"{job}-b-scratch", job, "scratch", task_id="b")
    kube.create_configmap(ns, f"{job}-b-diff", job, "artifact", task_id="b")
    kube.create_configmap(ns, f"{job}-x-scratch", job, "scratch", task_id="x")


def test_cascade_cancels_the_task_and_its_dependents_only(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    chain(kube, ns)
    kube.cancel_task(ns, "tc", "job", "b", reason="wrong approach", gracePeriodSeconds=5)
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert st["phase"] == "Completed", st
    assert [s["name"] for s in st["steps"]] == ["Validate", "ComputeCascade", "SignalRunners", "TerminateRunners",
                                                 "UpdateTaskStates", "ReleaseResources", "Verify"]
    assert all(s["state"] == "Succeeded" for s in st["steps"]), st["steps"]
    assert states(kube, ns, "job", ["a", "b", "c", "d", "x"]) == {
        "a": "Running", "b": "Cancelled", "c": "Cancelled", "d": "Cancelled", "x": "Running"}
    assert {a["taskId"]: (a["before"], a["after"], a["reason"]) for a in st["affectedTasks"]} == {
        "b": ("Running", "Cancelled", "wrong approach"),
        "c": ("Pending", "Cancelled", "dependency b cancelled"),
        "d": ("Ready", "Cancelled", "dependency b cancelled")}
    assert kube.task(ns, "job", "c")["status"]["cancellation"]["reason"] == "dependency b cancelled"
    # b's runner is gone; a's and x's run on; dispatch stays open
    assert sorted(p.metadata.name for p in kube.pods(ns, "necrocode.io/role=runner")) == ["job-a-runner", "job-x-runner"]
    assert kube.get("agentjobs", ns, "job")["spec"]["dispatch"]["blocked"] is False
    assert kube.get("agentjobs", ns, "job")["status"]["phase"] == "Running"
    # b's slot released and scratch deleted, its artifact kept; x's untouched
    assert kube.coord.read_namespaced_lease("job-slot-b", ns).spec.holder_identity is None
    assert kube.coord.read_namespaced_lease("job-slot-a", ns).spec.holder_identity == "job-a-runner"
    cms = {c.metadata.name for c in kube.core.list_namespaced_config_map(ns).items}
    assert "job-b-scratch" not in cms and {"job-b-diff", "job-x-scratch"} <= cms
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["tasksCancelled"], p["leasesReleased"]) == (1, 1, 3, 1)


def test_cascade_terminates_a_running_dependent(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    chain(kube, ns)
    kube.cancel_task(ns, "tc", "job", "a")
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert st["phase"] == "Completed"
    assert st["progress"]["runnersTotal"] == 2  # a's and b's runners
    assert [p.metadata.name for p in kube.pods(ns, "necrocode.io/role=runner")] == ["job-x-runner"]
    assert states(kube, ns, "job", ["a", "b", "c", "d", "x"]) == {
        "a": "Cancelled", "b": "Cancelled", "c": "Cancelled", "d": "Cancelled", "x": "Running"}


def test_without_cascade_dependents_are_blocked(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    chain(kube, ns)
    kube.cancel_task(ns, "tc", "job", "b", cascade=False)
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert st["phase"] == "Completed", st
    assert states(kube, ns, "job", ["a", "b", "c", "d", "x"]) == {
        "a": "Running", "b": "Cancelled", "c": "Blocked", "d": "Blocked", "x": "Running"}
    c = kube.task(ns, "job", "c")["status"]
    assert c["message"] == "dependency b cancelled" and c["blockedBy"] == "tc"
    assert (st["progress"]["tasksCancelled"], st["progress"]["tasksBlocked"]) == (1, 2)


def test_without_cascade_a_blocked_dependents_resources_are_left_alone(kube: Kubectl, namespace: str) -> None:
    """Blocked is not cancelled: the dependent keeps its scratch and its slot (the soak found
    them cleaned up with the cancelled task's)."""
    ns = namespace
    chain(kube, ns)
    kube.create_configmap(ns, "job-c-scratch", "job", "scratch", task_id="c")
    kube.create_lease(ns, "job-slot-c", job="job", task_id="c", holder="job-c-next")
    kube.cancel_task(ns, "tc", "job", "b", cascade=False)
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert st["phase"] == "Completed", st
    assert kube.task(ns, "job", "c")["status"]["state"] == "Blocked"
    assert kube.core.read_namespaced_config_map("job-c-scratch", ns).metadata.name == "job-c-scratch"
    assert kube.coord.read_namespaced_lease("job-slot-c", ns).spec.holder_identity == "job-c-next"
    assert (st["progress"]["leasesReleased"], st["progress"]["resourcesDeleted"]) == (1, 1)  # b's only


def test_diamond_cancels_each_dependent_once(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "dia")
    for t, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        kube.create_task(ns, "dia", t, "Pending", depends_on=deps)
    kube.cancel_task(ns, "tc", "dia", "a")
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert sorted(a["taskId"] for a in st["affectedTasks"]) == ["a", "b", "c", "d"]
    assert st["progress"]["tasksCancelled"] == 4
    assert set(states(kube, ns, "dia", ["a", "b", "c", "d"]).values()) == {"Cancelled"}


def test_wide_fan_out(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "fan")
    kube.create_task(ns, "fan", "root", "Running", runner="fan-root-runner")
    kube.create_runner(ns, "fan", "root", name="fan-root-runner")
    for i in range(40):
        kube.create_task(ns, "fan", f"leaf{i}", "Pending", depends_on=["root"])
    kube.create_task(ns, "fan", "other", "Pending")
    kube.cancel_task(ns, "tc", "fan", "root")
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert st["phase"] == "Completed"
    assert st["progress"]["tasksCancelled"] == 41
    assert kube.task(ns, "fan", "other")["status"]["state"] == "Pending"


def test_a_finished_task_is_rejected(kube: Kubectl, namespace: str) -> None:
    kube.create_job(namespace, "job")
    kube.create_task(namespace, "job", "done", "Done")
    kube.cancel_task(namespace, "tc", "job", "done")
    st = kube.wait_phase("taskcancellations", namespace, "tc")["status"]
    assert st["phase"] == "Rejected"
    assert st["message"] == "task 'done' is already Done; nothing to cancel"


def test_a_missing_task_is_rejected(kube: Kubectl, namespace: str) -> None:
    kube.create_job(namespace, "job")
    kube.cancel_task(namespace, "tc", "job", "ghost")
    st = kube.wait_phase("taskcancellations", namespace, "tc")["status"]
    assert st["phase"] == "Rejected"
    assert st["message"] == "task 'ghost' not found in job 'job'"


def test_a_cycle_in_depends_on_is_reported_not_looped(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "cyc")
    for t, deps in (("a", ["c"]), ("b", ["a"]), ("c", ["b"]), ("d", ["missing"])):
        kube.create_task(ns, "cyc", t, "Pending", depends_on=deps)
    kube.cancel_task(ns, "tc", "cyc", "a")
    st = kube.wait_phase("taskcancellations", ns, "tc")["status"]
    assert st["phase"] == "Completed"
    assert sorted(a["taskId"] for a in st["affectedTasks"]) == ["a", "b", "c"]
    assert any("cycle" in w for w in st["cascadeWarnings"])
    assert any("d depends on a task that does not exist" in w for w in st["cascadeWarnings"])
    assert kube.task(ns, "cyc", "d")["status"]["state"] == "Pending"


def test_task_cancellation_while_a_job_cancellation_runs(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "race")
    for t in ("a", "b", "c"):
        kube.create_runner(ns, "race", t, stop="never")
        kube.create_task(ns, "race", t, "Running", runner=f"race-{t}-runner")
    kube.create_task(ns, "race", "d", "Pending", depends_on=["a"])
    kube.cancel_job(ns, "jc", "race", gracePeriodSeconds=2, escalateAfterSeconds=1)
    wait_for(lambda: kube.get("agentjobs", ns, "race")["spec"]["dispatch"]["blocked"], what="job blocked")
    kube.cancel_task(ns, "tc", "race", "a")
    jc = kube.wait_phase("jobcancellations", ns, "jc", timeout=60)["status"]
    tc = kube.wait_phase("taskcancellations", ns, "tc", timeout=60)["status"]
    assert jc["phase"] == "Completed"
    assert tc["phase"] == "Completed" and tc["duplicateOf"] == "jobcancellation/jc"
    assert "covered by it" in tc["message"]
    assert tc["progress"]["tasksCancelled"] == 0 and tc["progress"]["runnersTotal"] == 0
    assert jc["progress"]["tasksCancelled"] == 4 and jc["progress"]["runnersTerminated"] == 3
    assert set(states(kube, ns, "race", ["a", "b", "c", "d"]).values()) == {"Cancelled"}


def test_job_cancellation_after_a_task_cancellation_does_not_double_count(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "race2")
    for t in ("a", "b"):
        kube.create_runner(ns, "race2", t, stop="never")
        kube.create_task(ns, "race2", t, "Running", runner=f"race2-{t}-runner")
    kube.create_task(ns, "race2", "c", "Pending", depends_on=["a"])
    kube.create_task(ns, "race2", "e", "Pending")
    kube.cancel_task(ns, "tc", "race2", "a", gracePeriodSeconds=3, escalateAfterSeconds=1)
    wait_for(lambda: any("necrocode.io/cancel-requested" in (p.metadata.annotations or {})
                         for p in kube.pods(ns, "necrocode.io/task=a")), what="task runner signalled")
    kube.cancel_job(ns, "jc", "race2", gracePeriodSeconds=3, escalateAfterSeconds=1)
    tc = kube.wait_phase("taskcancellations", ns, "tc", timeout=60)["status"]
    jc = kube.wait_phase("jobcancellations", ns, "jc", timeout=60)["status"]
    assert tc["phase"] == "Completed" and jc["phase"] == "Completed", (tc, jc)
    # every task Cancelled exactly once, every runner counted by exactly one record
    assert set(states(kube, ns, "race2", ["a", "b", "c", "e"]).values()) == {"Cancelled"}
    assert tc["progress"]["tasksCancelled"] + jc["progress"]["tasksCancelled"] == 4
    assert tc["progress"]["runnersTotal"] + jc["progress"]["runnersTotal"] == 2
    assert tc["progress"]["runnersTerminated"] + jc["progress"]["runnersTerminated"] == 2
    assert kube.pods(ns, "necrocode.io/role=runner") == []
    by = {t: kube.task(ns, "race2", t)["status"]["cancellation"]["cancelledBy"] for t in ("a", "c", "b", "e")}
    assert by == {"a": "tc", "c": "tc", "b": "jc", "e": "jc"}


def test_task_dry_run_changes_nothing(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    chain(kube, ns)

    def versions() -> dict[str, Any]:
        out: dict[str, Any] = {}
        out.update({f"pod/{p.metadata.name}": p.metadata.resource_version for p in kube.core.list_namespaced_pod(ns).items})
        out.update({f"lease/{x.metadata.name}": x.metadata.resource_version
                    for x in kube.coord.list_namespaced_lease(ns).items})
        out.update({f"cm/{c.metadata.name}": c.metadata.resource_version
                    for c in kube.core.list_namespaced_config_map(ns).items})
        for plural in ("agentjobs", "agenttasks"):
            for o in kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", ns, plural)["items"]:
                out[f"{plural}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        return out

    before = versions()
    kube.cancel_task(ns, "what-if", "job", "b", dryRun=True)
    st = kube.wait_phase("taskcancellations", ns, "what-if")["status"]
    assert st["phase"] == "Completed"
    assert {c["type"]: c["status"] for c in st["conditions"]}["DryRun"] == "True"
    assert st["plan"]["runnerPods"] == ["job-b-runner"]
    assert st["plan"]["leases"] == ["job-slot-b"]
    assert sorted(st["plan"]["scratchResources"]) == ["configmap/job-b-scratch"]
    assert st["plan"]["artifacts"] == ["configmap/job-b-diff"]
    assert {a["taskId"]: a["after"] for a in st["affectedTasks"]} == {"b": "Cancelled", "c": "Cancelled", "d": "Cancelled"}
    time.sleep(1)
    assert versions() == before
