"""JobCancellation end to end on the real control plane, with kwok runner pods."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import watch
from kubernetes.client.rest import ApiException

from tests.support.kube import G, Kubectl, V, wait_for

pytestmark = pytest.mark.usefixtures("operator")

RUNNER = "necrocode.io/role=runner"


def build_job(kube: Kubectl, ns: str, job: str = "job1") -> None:
    """A job with tasks in every state: three running (a runner that stops at once, one that
    stops slowly within its grace, one on a lost node), three pending, three finished; leases,
    scratch resources and artifacts; and another job that must be left alone."""
    kube.create_job(ns, job)
    for tid, stop, after in (("run-fast", "immediate", None), ("run-slow", "slow", 2), ("run-lost", "never", None)):
        pod = f"{job}-{tid}-runner"
        # the slow runner reads the cancel-requested annotation (it opted in); the others get
        # their graceful delete as the signal
        kube.create_runner(ns, job, tid, stop=stop, after=after, name=pod, signal=tid == "run-slow")
        kube.create_lease(ns, f"slot-{tid}", job=job, task_id=tid, holder=pod)
        kube.create_task(ns, job, tid, "Running", runner=pod, slot=f"slot-{tid}")
    kube.create_task(ns, job, "pending", "Pending", depends_on=["run-fast"])
    kube.create_task(ns, job, "ready", "Ready")
    kube.create_task(ns, job, "blocked", "Blocked", depends_on=["pending"])
    kube.create_task(ns, job, "done", "Done")
    kube.create_task(ns, job, "failed", "Failed")
    kube.create_task(ns, job, "cancelled", "Cancelled")
    kube.create_configmap(ns, f"{job}-scratch", job, "scratch")
    kube.create_pvc(ns, f"{job}-workspace", job, "scratch")
    kube.create_configmap(ns, f"{job}-diff", job, "artifact")
    kube.create_pvc(ns, f"{job}-results", job, "artifact")
    kube.create_lease(ns, "slot-free", pool="pool-a")
    # another job, running, that nothing may touch
    kube.create_job(ns, "other")
    kube.create_runner(ns, "other", "x", name="other-x-runner")
    kube.create_task(ns, "other", "x", "Running", runner="other-x-runner")
    kube.create_lease(ns, "slot-other", job="other", task_id="x", holder="other-x-runner")
    kube.create_configmap(ns, "other-scratch", "other", "scratch")
    wait_for(lambda: all(p.status.phase == "Running" for p in kube.pods(ns, RUNNER)), what="runners Running")


def test_cancels_a_whole_job_end_to_end(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    build_job(kube, ns)
    kube.cancel_job(ns, "stop-job1", "job1", reason="budget exceeded", requestedBy="alice",
                    gracePeriodSeconds=5, escalateAfterSeconds=1)

    # the signal reaches the slow runner, which opted in, while it is stopping; the lost one
    # (not opted in, no cooperative window) has only its graceful delete
    annotated = wait_for(lambda: [p for p in kube.pods(ns, "necrocode.io/job=job1")
                                  if "necrocode.io/cancel-requested" in (p.metadata.annotations or {})],
                         what="runner annotated")
    assert [p.metadata.name for p in annotated] == ["job1-run-slow-runner"]
    signal = json.loads(annotated[0].metadata.annotations["necrocode.io/cancel-requested"])
    assert signal["reason"] == "budget exceeded"
    assert signal["by"] == "jobcancellation/stop-job1"
    lost = kube.core.read_namespaced_pod("job1-run-lost-runner", ns)
    assert "necrocode.io/cancel-requested" not in (lost.metadata.annotations or {})

    # status is written while the work goes on: the lost runner holds TerminateRunners open
    def in_progress() -> dict[str, Any] | None:
        st = kube.get("jobcancellations", ns, "stop-job1").get("status") or {}
        steps = {s["name"]: s["state"] for s in st.get("steps", [])}
        running = st.get("phase") == "Running" and steps.get("TerminateRunners") == "Running"
        return st if running and st["progress"].get("runnersTerminated") == 2 else None

    live = wait_for(in_progress, timeout=20, what="two of three runners gone, the lost one still pending")
    assert live["progress"]["runnersTotal"] == 3
    assert live["runnerSummary"] == "2/3"
    assert {s["name"]: s["state"] for s in live["steps"]}["BlockDispatch"] == "Succeeded"

    jc = kube.wait_phase("jobcancellations", ns, "stop-job1", timeout=60)
    st = jc["status"]
    assert st["phase"] == "Completed", st
    assert [s["name"] for s in st["steps"]] == ["Validate", "BlockDispatch", "ClassifyTasks", "SignalRunners",
                                                 "TerminateRunners", "UpdateTaskStates", "CleanupResources", "Verify"]
    assert all(s["state"] == "Succeeded" for s in st["steps"]), st["steps"]
    signalled = {s["name"]: s["message"] for s in st["steps"]}["SignalRunners"]
    assert signalled.startswith("1 runner(s) annotated") and "2 get the graceful delete as their signal" in signalled
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (3, 3, 1)
    assert (p["tasksCancelled"], p["tasksUnaffected"]) == (6, 3)
    assert (p["leasesReleased"], p["resourcesDeleted"], p["artifactsPreserved"]) == (3, 2, 2)
    assert st["runnerSummary"] == "3/3 (1 forced)"
    assert {o["pod"]: o["outcome"] for o in st["runnerOutcomes"]} == {
        "job1-run-fast-runner": "Terminated", "job1-run-slow-runner": "Terminated",
        "job1-run-lost-runner": "Forced"}
    # spec.requestedBy "alice" is only the client's claim: who asked is the user the API server recorded
    recorded = jc["metadata"]["annotations"]["necrocode.io/requester"]
    assert recorded != "alice" and st["requestedBy"] == recorded and st["requesterVerified"] is True
    assert st["startedAt"] and st["completedAt"]
    assert {a["taskId"]: (a["before"], a["after"]) for a in st["affectedTasks"]} == {
        "run-fast": ("Running", "Cancelled"), "run-slow": ("Running", "Cancelled"),
        "run-lost": ("Running", "Cancelled"), "pending": ("Pending", "Cancelled"),
        "ready": ("Ready", "Cancelled"), "blocked": ("Blocked", "Cancelled")}
    assert sorted(st["cleanup"]["preserved"]) == ["configmap/job1-diff", "persistentvolumeclaim/job1-results"]
    assert jc["metadata"]["labels"]["necrocode.io/job"] == "job1"

    # the world: nothing of job1 left running, held or lost; the other job untouched
    assert kube.pods(ns, "necrocode.io/job=job1") == []
    assert [p.metadata.name for p in kube.pods(ns, "necrocode.io/job=other")] == ["other-x-runner"]
    for tid in ("run-fast", "run-slow", "run-lost", "pending", "ready", "blocked"):
        t = kube.task(ns, "job1", tid)["status"]
        assert t["state"] == "Cancelled", (tid, t)
        c = t["cancellation"]
        assert c["reason"] == "budget exceeded" and c["requestedBy"] == recorded and c["requesterVerified"] is True
        assert c["cancelledBy"] == "stop-job1" and c["cancelledAt"]
    for tid, state in (("done", "Done"), ("failed", "Failed"), ("cancelled", "Cancelled")):
        assert kube.task(ns, "job1", tid)["status"]["state"] == state
        assert "cancellation" not in kube.task(ns, "job1", tid)["status"]
    assert kube.task(ns, "other", "x")["status"]["state"] == "Running"
    for tid in ("run-fast", "run-slow", "run-lost"):
        lease = kube.coord.read_namespaced_lease(f"slot-{tid}", ns)
        assert lease.spec.holder_identity is None
        assert lease.metadata.labels == {"necrocode.io/repo-pool": "pool-a", "necrocode.io/slot-state": "dirty",
                                         "necrocode.io/released-by": jc["metadata"]["uid"]}
    assert kube.coord.read_namespaced_lease("slot-other", ns).spec.holder_identity == "other-x-runner"
    assert "necrocode.io/slot-state" not in (kube.coord.read_namespaced_lease("slot-free", ns).metadata.labels or {})
    cms = {c.metadata.name for c in kube.core.list_namespaced_config_map(ns).items}
    assert "job1-scratch" not in cms and {"job1-diff", "other-scratch"} <= cms
    pvcs = {c.metadata.name for c in kube.core.list_namespaced_persistent_volume_claim(ns).items}
    assert "job1-results" in pvcs
    wait_for(lambda: "job1-workspace" not in {c.metadata.name for c in
                                             kube.core.list_namespaced_persistent_volume_claim(ns).items},
             what="scratch PVC deleted")
    job = kube.get("agentjobs", ns, "job1")
    assert job["status"]["phase"] == "Cancelled"
    assert job["spec"]["dispatch"]["blocked"] is True

    # the cancellation's Events: its start, each forced runner, its end; a step that succeeded
    # is in status only (NECROCODE_STEP_EVENTS=failures, the default); the job and tasks got theirs
    reasons = {e.reason for e in kube.events_for(ns, "stop-job1")}
    assert {"Started", "RunnerForced", "Completed"} <= reasons
    assert not {r for r in reasons if r.endswith(("Started", "Succeeded")) and r != "Started"}, reasons
    assert {"Cancelling", "Cancelled"} <= {e.reason for e in kube.events_for(ns, "job1")}
    assert "Cancelled" in {e.reason for e in kube.events_for(ns, "job1-pending")}


def test_force_deletes_every_runner_without_grace(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "job2")
    for i, stop in enumerate(("slow", "never", "immediate")):
        kube.create_runner(ns, "job2", f"t{i}", stop=stop, after=60)
        kube.create_task(ns, "job2", f"t{i}", "Running", runner=f"job2-t{i}-runner")
    started = time.monotonic()
    kube.cancel_job(ns, "kill-job2", "job2", force=True)
    st = kube.wait_phase("jobcancellations", ns, "kill-job2", timeout=30)["status"]
    assert time.monotonic() - started < 20
    assert st["phase"] == "Completed", st
    steps = {s["name"]: s["state"] for s in st["steps"]}
    assert steps["SignalRunners"] == "Skipped"
    assert (st["progress"]["runnersTotal"], st["progress"]["runnersTerminated"], st["progress"]["runnersForced"]) == (3, 3, 3)
    assert kube.pods(ns, "necrocode.io/job=job2") == []


def test_missing_job_is_rejected_with_a_clear_message(kube: Kubectl, namespace: str) -> None:
    kube.cancel_job(namespace, "stop-ghost", "ghost")
    done = kube.wait_phase("jobcancellations", namespace, "stop-ghost")
    st = done["status"]
    assert st["phase"] == "Rejected"
    assert st["message"] == f"AgentJob 'ghost' not found in namespace {namespace}"
    assert [s["state"] for s in st["steps"]][1:] == ["Skipped"] * 7
    # kopf lets go of a finished record (its finalizer off) when it sees the final status: a
    # write of its own, which may come after the read above on a busy machine
    done = wait_for(lambda: (o := kube.get("jobcancellations", namespace, "stop-ghost"))
                    and not o["metadata"].get("finalizers") and o, what="kopf's finalizer removed")
    time.sleep(3)  # no retry loop: nothing writes to it again
    again = kube.get("jobcancellations", namespace, "stop-ghost")
    assert again["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"], (done, again)


def test_finished_job_is_rejected(kube: Kubectl, namespace: str) -> None:
    kube.create_job(namespace, "old", phase="Succeeded")
    kube.cancel_job(namespace, "stop-old", "old")
    st = kube.wait_phase("jobcancellations", namespace, "stop-old")["status"]
    assert st["phase"] == "Rejected"
    assert "already Succeeded" in st["message"]
    assert kube.get("agentjobs", namespace, "old")["spec"]["dispatch"]["blocked"] is False


def test_a_second_cancellation_of_the_same_job_is_a_duplicate(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "job3")
    kube.create_runner(ns, "job3", "t0", stop="slow", after=2)
    kube.create_task(ns, "job3", "t0", "Running", runner="job3-t0-runner")
    kube.cancel_job(ns, "first", "job3")
    wait_for(lambda: kube.get("agentjobs", ns, "job3")["spec"]["dispatch"]["blocked"], what="dispatch blocked")
    kube.cancel_job(ns, "second", "job3")  # while the first is running
    first = kube.wait_phase("jobcancellations", ns, "first", timeout=30)["status"]
    second = kube.wait_phase("jobcancellations", ns, "second", timeout=30)["status"]
    assert first["phase"] == "Completed" and first["progress"]["runnersTotal"] == 1
    assert second["phase"] == "Completed"
    assert second["duplicateOf"] == "jobcancellation/first"
    assert second["progress"]["runnersTotal"] == 0 and second["progress"]["tasksCancelled"] == 0
    kube.cancel_job(ns, "third", "job3")  # after it is done
    third = kube.wait_phase("jobcancellations", ns, "third", timeout=30)["status"]
    assert third["duplicateOf"] == "jobcancellation/first"


def test_the_job_is_never_claimed_and_still_open_for_dispatch(kube: Kubectl, namespace: str) -> None:
    """The claim (necrocode.io/cancelled-by) and the block (spec.dispatch.blocked and the label the
    admission policy reads) are one write: no version of the job carries the claim while a
    dispatcher could still start a runner for it."""
    ns = namespace
    kube.create_job(ns, "claimed")
    kube.create_runner(ns, "claimed", "t0")
    kube.create_task(ns, "claimed", "t0", "Running", runner="claimed-t0-runner")
    rv = kube.get("agentjobs", ns, "claimed")["metadata"]["resourceVersion"]
    kube.cancel_job(ns, "stop", "claimed")
    assert kube.wait_phase("jobcancellations", ns, "stop", timeout=30)["status"]["phase"] == "Completed"
    versions = []
    stream = watch.Watch().stream(kube.custom.list_namespaced_custom_object, G, V, ns, "agentjobs",
                                  field_selector="metadata.name=claimed", resource_version=rv, timeout_seconds=10)
    for ev in stream:
        job = ev["object"]
        versions.append(job)
        if (job.get("status") or {}).get("phase") == "Cancelled":
            break
    claimed = [j for j in versions if "necrocode.io/cancelled-by" in (j["metadata"].get("annotations") or {})]
    assert claimed and (claimed[-1].get("status") or {}).get("phase") == "Cancelled", versions
    for j in claimed:
        assert j["spec"]["dispatch"]["blocked"] is True, j
        assert j["metadata"]["labels"]["necrocode.io/dispatch-blocked"] == "true", j


def test_what_the_dispatcher_writes_to_the_job_meanwhile_is_kept(kube: Kubectl, namespace: str) -> None:
    """The phase Cancelled is written from the job as BlockDispatch left it; a condition the
    dispatcher added in between is kept (the write's resourceVersion makes it read the job again)."""
    ns = namespace
    kube.create_job(ns, "busy")
    kube.create_runner(ns, "busy", "t0", stop="slow", after=3)
    kube.create_task(ns, "busy", "t0", "Running", runner="busy-t0-runner")
    kube.cancel_job(ns, "stop", "busy")
    wait_for(lambda: (kube.get("agentjobs", ns, "busy").get("status") or {}).get("phase") == "Cancelling",
             what="the job Cancelling")
    job = kube.get("agentjobs", ns, "busy")
    theirs = {"type": "Dispatched", "status": "False", "reason": "Blocked", "message": "by the dispatcher",
              "lastTransitionTime": "2026-12-03T00:00:00Z"}
    kube.patch_status("agentjobs", ns, "busy", {"conditions": [*job["status"]["conditions"], theirs]})
    assert kube.wait_phase("jobcancellations", ns, "stop", timeout=30)["status"]["phase"] == "Completed"
    st = kube.get("agentjobs", ns, "busy")["status"]
    assert st["phase"] == "Cancelled"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Dispatched"]["message"] == "by the dispatcher", st
    assert (conds["Cancelled"]["status"], conds["Cancelled"]["reason"]) == ("True", "Cancelled"), st


def test_concurrent_cancellations_act_once(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "job4")
    for i in range(4):
        kube.create_runner(ns, "job4", f"t{i}")
        kube.create_task(ns, "job4", f"t{i}", "Running", runner=f"job4-t{i}-runner")
    for n in range(3):
        kube.cancel_job(ns, f"c{n}", "job4")
    results = [kube.wait_phase("jobcancellations", ns, f"c{n}", timeout=30)["status"] for n in range(3)]
    actors = [r for r in results if not r.get("duplicateOf")]
    assert len(actors) == 1, results
    assert actors[0]["progress"]["tasksCancelled"] == 4
    assert sum(r["progress"]["tasksCancelled"] for r in results) == 4


def test_admission_refuses_new_runners_once_dispatch_is_blocked(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "job5")
    kube.create_runner(ns, "job5", "t0", stop="never")
    kube.create_task(ns, "job5", "t0", "Running", runner="job5-t0-runner")
    kube.create_job(ns, "job6")
    kube.cancel_job(ns, "stop-job5", "job5", gracePeriodSeconds=3, escalateAfterSeconds=1)
    wait_for(lambda: kube.get("agentjobs", ns, "job5")["metadata"].get("labels", {}).get("necrocode.io/dispatch-blocked"),
             what="job labelled blocked")

    # a dispatcher racing the cancellation cannot start new work for the job
    def refused() -> list[ApiException]:
        try:
            kube.create_runner(ns, "job5", "late", name=f"job5-late-{time.monotonic_ns()}")
        except ApiException as exc:
            return [exc]
        return []

    [err] = wait_for(refused, timeout=10, what="runner creation refused")
    assert err.status == 403
    assert "job job5 is being cancelled: dispatch is blocked" in err.body
    kube.create_runner(ns, "job6", "t0")  # other jobs still dispatch
    st = kube.wait_phase("jobcancellations", ns, "stop-job5", timeout=30)["status"]
    assert st["phase"] == "Completed"
    assert [p.metadata.name for p in kube.pods(ns, RUNNER)] == ["job6-t0-runner"]


def test_an_undeletable_scratch_resource_makes_it_partially_completed(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    policy = f"deny-delete-{ns}"
    kube.apply_admission({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                         "operations": ["DELETE"], "resources": ["configmaps"]}]},
                 "validations": [{"expression": "oldObject.metadata.name != 'job7-stuck'",
                                  "message": "this scratch configmap is pinned"}]}})
    kube.apply_admission({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}})
    try:
        kube.create_configmap(ns, "job7-stuck", "job7", "scratch")

        def pinned() -> bool:
            try:
                kube.core.delete_namespaced_config_map("job7-stuck", ns, dry_run="All")
                return False
            except ApiException as exc:
                return exc.status == 422  # a denying policy without a reason answers Invalid

        wait_for(pinned, timeout=20, what="policy active")
        kube.create_job(ns, "job7")
        kube.create_task(ns, "job7", "t0", "Pending")
        kube.create_configmap(ns, "job7-tmp", "job7", "scratch")
        kube.cancel_job(ns, "stop-job7", "job7")
        st = kube.wait_phase("jobcancellations", ns, "stop-job7", timeout=60)["status"]
        assert st["phase"] == "PartiallyCompleted", st
        assert {s["name"]: s["state"] for s in st["steps"]}["CleanupResources"] == "Failed"
        errors = [e for e in st["errors"] if e["object"] == "configmap/job7-stuck"]
        assert len(errors) == 1
        # a refusal is the API's answer, not a fault: the one retry policy repeats only 429, 5xx,
        # timeouts and resets (docs/reliability.md), so the refused delete was tried once
        assert errors[0]["attempts"] == 1 and errors[0]["step"] == "CleanupResources"
        assert "pinned" in errors[0]["message"]
        assert st["progress"]["resourcesDeleted"] == 1
        # a failed step is the one step that gets an Event by default (NECROCODE_STEP_EVENTS)
        failed = [e for e in kube.events_for(ns, "stop-job7") if e.reason == "CleanupResourcesFailed"]
        assert len(failed) == 1 and failed[0].type == "Warning" and "1 not done" in failed[0].message, failed
        assert kube.task(ns, "job7", "t0")["status"]["state"] == "Cancelled"
    finally:
        kube.adm.delete_validating_admission_policy_binding(policy)
        kube.adm.delete_validating_admission_policy(policy)


@pytest.mark.parametrize("spec, fragment", [
    ({"jobName": "j", "gracePeriodSeconds": 5000}, "spec.gracePeriodSeconds"),
    ({"jobName": "j", "gracePeriodSeconds": -1}, "spec.gracePeriodSeconds"),
    ({"reason": "no job"}, "spec.jobName: Required value"),
    ({"jobName": ""}, "spec.jobName"),
    ({"jobName": "j", "force": "yes"}, "spec.force"),
    ({"jobName": "j", "mode": "Drain"}, "mode Drain needs drainDeadlineSeconds"),
    ({"jobName": "j", "drainDeadlineSeconds": 60}, "drainDeadlineSeconds is only for mode Drain"),
    ({"jobName": "j", "mode": "Drain", "drainDeadlineSeconds": 90000}, "spec.drainDeadlineSeconds"),
    ({"jobName": "j", "mode": "Finish"}, "spec.mode"),
    ({"jobName": "j", "cooperativeSeconds": 3601}, "spec.cooperativeSeconds"),
])
def test_invalid_spec_is_refused_by_the_api_server(kube: Kubectl, namespace: str, spec: dict[str, Any],
                                                   fragment: str) -> None:
    with pytest.raises(ApiException) as err:
        kube.custom.create_namespaced_custom_object("necrocode.io", "v1alpha1", namespace, "jobcancellations", {
            "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation", "metadata": {"name": "bad"},
            "spec": spec})
    assert err.value.status == 422
    assert fragment in err.value.body


def test_spec_is_immutable_but_force_may_be_turned_on(kube: Kubectl, namespace: str) -> None:
    """Only spec.force from false to true (an escalation) changes a spec, and only while the
    cancellation runs; every refusal says why."""
    def refused(name: str, spec: dict[str, Any]) -> str:
        with pytest.raises(ApiException) as err:
            kube.custom.patch_namespaced_custom_object("necrocode.io", "v1alpha1", namespace, "jobcancellations",
                                                       name, {"spec": spec})
        assert err.value.status == 422, err.value.body
        return str(err.value.body)

    kube.cancel_job(namespace, "fixed", "nothing-here")
    for change in ({"reason": "another"}, {"gracePeriodSeconds": 1}, {"ttlSecondsAfterFinished": 5},
                   {"reason": "another", "force": True}):
        assert "spec is immutable once created, except spec.force, which may change from false to true" in \
            refused("fixed", change), change
    kube.cancel_job(namespace, "forced", "nothing-here", force=True)
    assert "spec.force cannot change from true to false" in refused("forced", {"force": False})
    assert kube.wait_phase("jobcancellations", namespace, "fixed")["status"]["phase"] == "Rejected"
    assert "spec.force can be turned on only while the cancellation is pending or running" in \
        refused("fixed", {"force": True})
    assert kube.get("jobcancellations", namespace, "fixed")["metadata"]["generation"] == 1


def test_defaults_are_filled_in_by_the_api_server(kube: Kubectl, namespace: str) -> None:
    obj = kube.cancel_job(namespace, "defaults", "nothing-here")
    assert obj["spec"] == {"jobName": "nothing-here", "force": False, "gracePeriodSeconds": 30,
                           "escalateAfterSeconds": 10, "preserveArtifacts": True, "dryRun": False,
                           "mode": "Cancel", "cooperativeSeconds": 0}


def test_dry_run_changes_nothing_and_reports_the_plan(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    build_job(kube, ns, "job8")

    def versions() -> dict[str, str]:
        out = {}
        for p in kube.core.list_namespaced_pod(ns).items:
            out[f"pod/{p.metadata.name}"] = p.metadata.resource_version
        for lease in kube.coord.list_namespaced_lease(ns).items:
            out[f"lease/{lease.metadata.name}"] = lease.metadata.resource_version
        for c in kube.core.list_namespaced_config_map(ns).items:
            out[f"cm/{c.metadata.name}"] = c.metadata.resource_version
        for plural in ("agentjobs", "agenttasks"):
            for o in kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", ns, plural)["items"]:
                out[f"{plural}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        return out

    before = versions()
    kube.cancel_job(ns, "what-if", "job8", dryRun=True)
    st = kube.wait_phase("jobcancellations", ns, "what-if")["status"]
    assert st["phase"] == "Completed"
    assert {c["type"]: c["status"] for c in st["conditions"]}["DryRun"] == "True"
    assert sorted(st["plan"]["runnerPods"]) == ["job8-run-fast-runner", "job8-run-lost-runner", "job8-run-slow-runner"]
    assert sorted(st["plan"]["leases"]) == ["slot-run-fast", "slot-run-lost", "slot-run-slow"]
    assert sorted(st["plan"]["scratchResources"]) == ["configmap/job8-scratch", "persistentvolumeclaim/job8-workspace"]
    assert sorted(st["plan"]["artifacts"]) == ["configmap/job8-diff", "persistentvolumeclaim/job8-results"]
    assert len(st["affectedTasks"]) == 6
    time.sleep(1)
    assert versions() == before


def test_record_is_deleted_after_its_ttl(kube: Kubectl, namespace: str) -> None:
    kube.cancel_job(namespace, "short-lived", "ghost", ttlSecondsAfterFinished=1)
    kube.wait_phase("jobcancellations", namespace, "short-lived")

    def gone() -> bool:
        try:
            kube.get("jobcancellations", namespace, "short-lived")
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=30, what="record deleted after TTL")
