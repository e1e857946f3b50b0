"""Issue 13: every cancellation ends, no job is locked out, no runner loses its grace — under API
faults (admission policies that refuse a delete or an update), odd values (markers left on runner
pods, long names, two records with the same name), deleted records, and sizes that push a status
towards etcd's object limit."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from necrocode.kube import AlreadyExists, ApiError, Kube, core_path, nc_path
from tests.support.kube import (
    ClusterInfo,
    G,
    Kubectl,
    V,
    absent,
    bulk,
    deny_admission,
    kubectl,
    remove_admission,
    runner_pod_body,
    sa_kubeconfig,
    task_body,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("operator")

MARKER = "necrocode.io/cancel-requested"
UNDELETABLE = "test.necrocode.io/undeletable"


# ---------------------------------------------------------------------------- helpers
def say(line: str) -> None:
    """A timing note on the real stderr (the in-process operator's runner captures sys.stderr)."""
    print(line, file=sys.__stderr__, flush=True)


def steps(st: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["state"] for s in st.get("steps", [])}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions", []) if c.get("type") == type_), None)


def step_is(kube: Kubectl, plural: str, ns: str, name: str, step: str, state: str) -> dict[str, Any] | None:
    st = kube.get(plural, ns, name).get("status") or {}
    return st if steps(st).get(step) == state else None


def running_job(kube: Kubectl, ns: str, job: str, tasks: list[str], stop: str = "immediate", after: int | None = None,
                grace: int = 30, leases: bool = False, signal: bool = False) -> list[str]:
    """A Running job with one Running task per id, each with a runner pod (and a held Lease); returns the pod names.
    `signal`: the runners opt in to the cancel-requested annotation."""
    kube.create_job(ns, job)
    pods = []
    for tid in tasks:
        pod = f"{job}-{tid}-runner"
        kube.create_runner(ns, job, tid, stop=stop, after=after, name=pod, grace=grace, signal=signal)
        slot = None
        if leases:
            slot = f"{job}-slot-{tid}"
            kube.create_lease(ns, slot, job=job, task_id=tid, holder=pod)
        kube.create_task(ns, job, tid, "Running", runner=pod, slot=slot)
        pods.append(pod)
    return pods


def lease_held(kube: Kubectl, ns: str, name: str, job: str) -> bool:
    lease = kube.coord.read_namespaced_lease(name, ns)
    return bool(lease.spec.holder_identity) and (lease.metadata.labels or {}).get("necrocode.io/job") == job


def lease_released(kube: Kubectl, ns: str, name: str) -> bool:
    lease = kube.coord.read_namespaced_lease(name, ns)
    return lease.spec.holder_identity is None and "necrocode.io/job" not in (lease.metadata.labels or {})


def set_marker(kube: Kubectl, ns: str, pod: str, value: str) -> None:
    kube.core.patch_namespaced_pod(pod, ns, {"metadata": {"annotations": {MARKER: value}}})


def watch_markers(kube: Kubectl, ns: str, selector: str, pods: list[str], timeout: float = 45.0) -> dict[str, str]:
    """Poll the runner pods until all of them are gone; return, for each, the last marker it carried
    while it was terminating (a pod never seen terminating is missing from the result)."""
    seen: dict[str, str] = {}

    def all_gone() -> bool:
        present = kube.pods(ns, selector)
        for p in present:
            if p.metadata.deletion_timestamp is not None:
                seen[p.metadata.name] = (p.metadata.annotations or {}).get(MARKER, "<no marker>")
        return not [p for p in present if p.metadata.name in pods]

    try:
        wait_for(all_gone, timeout=timeout, interval=0.1, what="runner pods gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; markers seen while terminating: {seen}") from None
    return seen


def assert_own_marker(value: str | None, by: str, uid: str, reason: str) -> None:
    assert value is not None, "the pod was never seen terminating: it went without a graceful delete"
    try:
        marker = json.loads(value)
    except ValueError:
        raise AssertionError(f"marker is not JSON while terminating: {value!r}") from None
    assert isinstance(marker, dict), f"marker is not a JSON object: {value!r}"
    assert {"reason", "requestedAt", "by", "uid"} <= set(marker), marker
    assert marker["by"] == by and marker["uid"] == uid, marker
    assert marker["reason"] == reason and marker["requestedAt"], marker


ODD_MARKERS = {
    "false": "false",
    "list": "[]",
    "garbage": "not json at all",
    "stale": json.dumps({"by": "jobcancellation/long-gone", "uid": "00000000-0000-0000-0000-000000000000"}),
}


# ---------------------------------------------------------------------------- 1. odd markers
def test_odd_markers_on_runners_are_overwritten_and_every_runner_counted(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    tids = list(ODD_MARKERS)
    # runners that read the annotation (a JobCancellation annotates no other without a window)
    pods = running_job(kube, ns, "odd", tids, stop="slow", after=3, grace=10, signal=True)
    for tid, pod in zip(tids, pods, strict=True):
        set_marker(kube, ns, pod, ODD_MARKERS[tid])
    wait_for(lambda: all(p.status.phase == "Running" for p in kube.pods(ns, "necrocode.io/job=odd")) and
             len(kube.pods(ns, "necrocode.io/job=odd")) == 4, what="runners Running")

    jc = kube.cancel_job(ns, "stop-odd", "odd", reason="odd markers", gracePeriodSeconds=10, escalateAfterSeconds=10)
    seen = watch_markers(kube, ns, "necrocode.io/job=odd", pods)
    for pod in pods:
        assert_own_marker(seen.get(pod), "jobcancellation/stop-odd", jc["metadata"]["uid"], "odd markers")

    st = kube.wait_phase("jobcancellations", ns, "stop-odd", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (4, 4, 0), p
    assert kube.pods(ns, "necrocode.io/job=odd") == []


def test_odd_marker_on_a_task_runner_is_overwritten(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    [pod] = running_job(kube, ns, "oddt", ["a"], stop="slow", after=3, grace=10)
    kube.create_task(ns, "oddt", "b", "Pending")
    set_marker(kube, ns, pod, "[]")
    wait_for(lambda: all(p.status.phase == "Running" for p in kube.pods(ns, "necrocode.io/job=oddt")),
             what="runner Running")

    tc = kube.cancel_task(ns, "stop-a", "oddt", "a", reason="odd marker", gracePeriodSeconds=10, escalateAfterSeconds=10)
    seen = watch_markers(kube, ns, "necrocode.io/job=oddt", [pod])
    assert_own_marker(seen.get(pod), "taskcancellation/stop-a", tc["metadata"]["uid"], "odd marker")

    st = kube.wait_phase("taskcancellations", ns, "stop-a", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (1, 1, 0), p
    assert kube.task(ns, "oddt", "a")["status"]["state"] == "Cancelled"
    assert kube.task(ns, "oddt", "b")["status"]["state"] == "Pending"


# ---------------------------------------------------------------------------- 2. refused delete
def test_a_runner_whose_delete_is_refused_ends_partially_completed_and_keeps_its_slot(
        kube: Kubectl, namespace: str) -> None:
    ns = namespace
    policy = f"test-undeletable-{ns}"
    denial = f"runner pod pinned by the test policy {policy}"
    pods = running_job(kube, ns, "pin", ["a", "b", "c"], leases=True)
    pinned = pods[0]
    kube.core.patch_namespaced_pod(pinned, ns, {"metadata": {"labels": {UNDELETABLE: "true"}}})
    deny_admission(
        kube, policy, ns,
        rules=[{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["pods"]}],
        expression=f"!(has(oldObject.metadata.labels) && '{UNDELETABLE}' in oldObject.metadata.labels"
                   f" && oldObject.metadata.labels['{UNDELETABLE}'] == 'true')",
        message=denial)
    try:
        def refused() -> bool:
            try:
                kube.core.delete_namespaced_pod(pinned, ns, dry_run="All")
                return False
            except ApiException as exc:
                return exc.status == 403 and denial in exc.body

        wait_for(refused, timeout=20, what="the policy refuses to delete the pinned runner")
        kube.core.delete_namespaced_pod(pods[1], ns, dry_run="All")  # the others may go

        started = time.monotonic()
        kube.cancel_job(ns, "first", "pin", gracePeriodSeconds=1, escalateAfterSeconds=1)
        st = kube.wait_phase("jobcancellations", ns, "first", timeout=90)["status"]
        say(f"first ended {st['phase']} after {time.monotonic() - started:.1f}s")
        assert st["phase"] == "PartiallyCompleted", st
        errors = [e for e in st.get("errors", []) if e["object"] == f"pod/{pinned}"]
        assert errors, st.get("errors")
        assert any(denial in e["message"] and e["attempts"] >= 2 for e in errors), errors
        p = st["progress"]
        assert (p["runnersTotal"], p["runnersTerminated"]) == (3, 2), p
        # the runner that is still there keeps its repo slot; the others' are released
        assert lease_held(kube, ns, "pin-slot-a", "pin")
        assert lease_released(kube, ns, "pin-slot-b") and lease_released(kube, ns, "pin-slot-c")
        assert [x.metadata.name for x in kube.pods(ns, "necrocode.io/job=pin")] == [pinned]
        # its Events say it is stuck, not that it was force-deleted (it never was); the others
        # may have been forced (kwok late on a busy machine), each with an Event of its own
        events = [(e.reason, e.message) for e in kube.events_for(ns, "first")]
        assert any(r == "RunnerStuck" and pinned in m for r, m in events), events
        assert not any(r == "RunnersForced" or (r == "RunnerForced" and pinned in m) for r, m in events), events

        # the fault goes away: a second request finishes the job
        remove_admission(kube, policy, binding_only=True)

        def deletable() -> bool:
            try:
                kube.core.delete_namespaced_pod(pinned, ns, dry_run="All")
                return True
            except ApiException:
                return False

        wait_for(deletable, timeout=20, what="the policy no longer refuses")
        kube.cancel_job(ns, "second", "pin", gracePeriodSeconds=1, escalateAfterSeconds=1)
        st2 = kube.wait_phase("jobcancellations", ns, "second", timeout=60)["status"]
        assert st2.get("duplicateOf") is None, st2
        assert st2["phase"] == "Completed", st2
        assert kube.pods(ns, "necrocode.io/job=pin") == []
        assert lease_released(kube, ns, "pin-slot-a")
    finally:
        remove_admission(kube, policy)


# ---------------------------------------------------------------------------- 3. no lock-out after Failed
def test_a_failed_cancellation_does_not_lock_the_job_out(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    policy = f"test-noblock-{ns}"
    denial = f"dispatch may not be blocked (test policy {policy})"
    running_job(kube, ns, "lock", ["a", "b"])
    kube.create_task(ns, "lock", "c", "Pending", depends_on=["a"])
    blocked = "has(object.spec.dispatch) && has(object.spec.dispatch.blocked) && object.spec.dispatch.blocked == true"
    deny_admission(
        kube, policy, ns,
        rules=[{"apiGroups": [G], "apiVersions": [V], "operations": ["UPDATE"], "resources": ["agentjobs"]}],
        expression=f"!(({blocked}) && !({blocked.replace('object.', 'oldObject.')}))",
        message=denial)
    try:
        def block(dry_run: str | None = "All") -> None:
            kube.custom.patch_namespaced_custom_object(G, V, ns, "agentjobs", "lock",
                                                       {"spec": {"dispatch": {"blocked": True}}}, dry_run=dry_run)

        def refused() -> bool:
            try:
                block()
                return False
            except ApiException as exc:
                return exc.status == 403 and denial in exc.body

        wait_for(refused, timeout=20, what="the policy refuses to block dispatch")
        # a claim (an annotation) still goes through
        kube.custom.patch_namespaced_custom_object(G, V, ns, "agentjobs", "lock",
                                                   {"metadata": {"annotations": {"test": "x"}}}, dry_run="All")

        kube.cancel_job(ns, "first", "lock", gracePeriodSeconds=1, escalateAfterSeconds=1)
        st = kube.wait_phase("jobcancellations", ns, "first", timeout=60)["status"]
        assert st["phase"] == "Failed", st
        assert steps(st)["BlockDispatch"] == "Failed", st["steps"]

        remove_admission(kube, policy, binding_only=True)

        def allowed() -> bool:
            try:
                block()
                return True
            except ApiException:
                return False

        wait_for(allowed, timeout=20, what="the policy no longer refuses")
        kube.cancel_job(ns, "second", "lock", gracePeriodSeconds=1, escalateAfterSeconds=1)
        st2 = kube.wait_phase("jobcancellations", ns, "second", timeout=60)["status"]
        assert st2.get("duplicateOf") is None, st2
        assert st2["phase"] == "Completed", st2
        assert kube.pods(ns, "necrocode.io/job=lock") == []
        job = kube.get("agentjobs", ns, "lock")
        assert job["status"]["phase"] == "Cancelled"
        assert job["spec"]["dispatch"]["blocked"] is True
        assert {t: kube.task(ns, "lock", t)["status"]["state"] for t in ("a", "b", "c")} == {
            "a": "Cancelled", "b": "Cancelled", "c": "Cancelled"}
    finally:
        remove_admission(kube, policy)


# ---------------------------------------------------------------------------- 4. escalation by a forced request
def test_a_forced_request_escalates_the_running_graceful_one(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    pods = running_job(kube, ns, "esc", ["a", "b", "c"], stop="never", grace=300)
    kube.cancel_job(ns, "slow", "esc", gracePeriodSeconds=300, escalateAfterSeconds=300)
    wait_for(lambda: step_is(kube, "jobcancellations", ns, "slow", "TerminateRunners", "Running"),
             what="slow's TerminateRunners Running")
    wait_for(lambda: len(ps := kube.pods(ns, "necrocode.io/job=esc")) == 3
             and all(p.metadata.deletion_timestamp is not None for p in ps), what="every runner terminating")

    started = time.monotonic()
    kube.cancel_job(ns, "now", "esc", force=True)
    now = kube.wait_phase("jobcancellations", ns, "now", timeout=60)["status"]
    slow = kube.wait_phase("jobcancellations", ns, "slow", timeout=60)["status"]
    say(f"slow ended {slow['phase']} {time.monotonic() - started:.1f}s after the forced request")

    assert now["phase"] == "Completed", now
    assert now.get("duplicateOf") == "jobcancellation/slow", now
    assert now.get("escalated") == "jobcancellation/slow", now
    assert (condition(now, "Escalated") or {}).get("status") == "True", now.get("conditions")
    assert now["progress"]["runnersTotal"] == 0, now["progress"]  # counted once, by slow

    assert slow["phase"] == "Completed", slow
    p = slow["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (3, 3, 3), p
    assert slow.get("escalatedBy") == "jobcancellation/now", slow
    assert (condition(slow, "Escalated") or {}).get("status") == "True", slow.get("conditions")
    wait_for(lambda: "Escalated" in {e.reason for e in kube.events_for(ns, "slow")
                                     if e.involved_object.kind == "JobCancellation"},
             timeout=10, what="an Escalated Event on slow")
    assert not [x for x in kube.pods(ns, "necrocode.io/job=esc") if x.metadata.name in pods]


# ---------------------------------------------------------------------------- 4b. escalation by spec.force
FORCER = "necrocode.io/force-requester"


@pytest.mark.parametrize("plural", ["jobcancellations", "taskcancellations"])
def test_kubectl_patch_of_spec_force_escalates_a_running_graceful_cancellation(
        kube: Kubectl, cluster: ClusterInfo, namespace: str, tmp_path: Path, plural: str) -> None:
    """`kubectl patch --type merge -p '{"spec":{"force":true}}'` by a user (a ServiceAccount with
    patch, as in necrocode-cancel-edit): the running daemon forces the remaining runners at once,
    and who asked is the API server's record, not what the client wrote."""
    ns = namespace
    pods = running_job(kube, ns, "esc", ["a", "b"], stop="never", grace=300)
    if plural == "jobcancellations":
        kube.cancel_job(ns, "slow", "esc", gracePeriodSeconds=300, escalateAfterSeconds=300)
    else:
        kube.cancel_task(ns, "slow", "esc", "a", gracePeriodSeconds=300, escalateAfterSeconds=300)
        pods = pods[:1]
    wait_for(lambda: step_is(kube, plural, ns, "slow", "TerminateRunners", "Running"),
             what="slow's TerminateRunners Running")
    wait_for(lambda: all(p.metadata.deletion_timestamp is not None for p in kube.pods(ns, "necrocode.io/job=esc")
                         if p.metadata.name in pods), what="its runners terminating")

    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": "oncall"}})
    kube.rbac.create_namespaced_role(ns, {"metadata": {"name": "oncall"}, "rules": [
        {"apiGroups": [G], "resources": [plural], "verbs": ["get", "patch"]}]})
    kube.rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "oncall"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "oncall"},
        "subjects": [{"kind": "ServiceAccount", "name": "oncall", "namespace": ns}]})
    oncall = f"system:serviceaccount:{ns}:oncall"
    wait_for(lambda: kube.auth.create_subject_access_review({"spec": {"user": oncall, "resourceAttributes": {
        "namespace": ns, "verb": "patch", "group": G, "resource": plural}}}).status.allowed, what="RBAC for oncall")
    kc = sa_kubeconfig(kube, cluster.kubeconfig, tmp_path / "oncall.kubeconfig", ns, "oncall")

    started = time.monotonic()
    out = kubectl(cluster, "patch", plural, "slow", "-n", ns, "--type", "merge", "-p",
                  json.dumps({"metadata": {"annotations": {FORCER: "someone-else"}}, "spec": {"force": True}}),
                  kubeconfig=kc)
    assert out.returncode == 0, out.stderr
    done = kube.wait_phase(plural, ns, "slow", timeout=60)
    took = time.monotonic() - started
    say(f"{plural}/slow ended {done['status']['phase']} {took:.1f}s after spec.force was set (grace 300 s)")
    assert took < 30, took

    st = done["status"]
    assert st["phase"] == "Completed", st
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (len(pods), len(pods), len(pods)), p
    assert not [x for x in kube.pods(ns, "necrocode.io/job=esc") if x.metadata.name in pods]
    assert done["metadata"]["annotations"][FORCER] == oncall  # written by the API server, not the client
    assert st["escalatedByUser"] == oncall and "escalatedBy" not in st, st
    escalated = condition(st, "Escalated") or {}
    assert (escalated.get("status"), escalated.get("reason")) == ("True", "ForceSet"), st["conditions"]
    assert oncall in escalated["message"]
    events = wait_for(lambda: [e for e in kube.events_for(ns, "slow") if e.reason == "Escalated"],
                      timeout=10, what="an Escalated Event on slow")
    assert oncall in events[0].message and "someone-else" not in events[0].message
    # the conditions observe the spec's new generation: kubectl wait takes them
    assert done["metadata"]["generation"] == 2 and st["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in st["conditions"] if c["type"] in ("Succeeded", "Escalated")} == {2}
    out = kubectl(cluster, "wait", "-n", ns, "--for=condition=Succeeded", f"{plural}/slow", "--timeout=30s")
    assert out.returncode == 0, out.stdout + out.stderr

    # who escalated is set once: neither the user nor a cluster admin can change it afterwards
    for config in (kc, None):
        out = kubectl(cluster, "annotate", plural, "slow", "-n", ns, f"{FORCER}=someone-else", "--overwrite",
                      kubeconfig=config)
        assert out.returncode != 0 and "cannot be set or changed" in out.stderr, out.stderr
    # nor may a user with patch write the operator's record of a forced request that escalated it
    out = kubectl(cluster, "annotate", plural, "slow", "-n", ns, "necrocode.io/escalated-by=jobcancellation/x",
                  kubeconfig=kc)
    assert out.returncode != 0 and "necrocode.io/escalated-by is written by the operator" in out.stderr, out.stderr
    out = kubectl(cluster, "patch", plural, "slow", "-n", ns, "--type", "merge", "-p", '{"spec": {"force": false}}')
    assert out.returncode != 0 and "spec.force cannot change from true to false" in out.stderr, out.stderr
    assert kube.get(plural, ns, "slow")["metadata"]["annotations"][FORCER] == oncall


# ---------------------------------------------------------------------------- 5. long job names
@pytest.mark.parametrize("plural", ["jobcancellations", "taskcancellations"])
def test_a_job_name_longer_than_a_label_value_is_refused(kube: Kubectl, namespace: str, plural: str) -> None:
    def create(name: str, job: str) -> dict[str, Any]:
        if plural == "jobcancellations":
            return kube.cancel_job(namespace, name, job)
        return kube.cancel_task(namespace, name, job, "t1")

    long64 = "job-" + "x" * 59 + "z"
    assert len(long64) == 64
    with pytest.raises(ApiException) as err:
        create("too-long", long64)
    assert err.value.status == 422, err.value.body
    assert "63" in json.loads(err.value.body)["message"], err.value.body
    assert absent(lambda: kube.get(plural, namespace, "too-long"))

    long63 = long64[:62] + "z"
    assert len(long63) == 63
    create("just-fits", long63)
    st = kube.wait_phase(plural, namespace, "just-fits", timeout=30)["status"]
    assert st["phase"] == "Rejected", st
    assert long63 in st["message"]


# ---------------------------------------------------------------------------- 6. same names, different kinds
def test_a_job_and_a_task_cancellation_with_the_same_name_are_told_apart(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    running_job(kube, ns, "twin", ["a"])
    kube.create_task(ns, "twin", "b", "Pending", depends_on=["a"])
    kube.create_task(ns, "twin", "c", "Pending")

    tc = kube.cancel_task(ns, "same", "twin", "a", cascade=False)
    tst = kube.wait_phase("taskcancellations", ns, "same", timeout=60)["status"]
    assert tst["phase"] == "Completed", tst
    assert kube.task(ns, "twin", "a")["status"]["state"] == "Cancelled"
    b = kube.task(ns, "twin", "b")["status"]
    assert b["state"] == "Blocked"
    assert b["blockedBy"] == "same" and b.get("blockedByUid") == tc["metadata"]["uid"], b
    assert kube.task(ns, "twin", "c")["status"]["state"] == "Pending"

    jc = kube.cancel_job(ns, "same", "twin")
    jst = kube.wait_phase("jobcancellations", ns, "same", timeout=60)["status"]
    assert jst["phase"] == "Completed", jst
    assert jst.get("duplicateOf") is None, jst
    for t in ("b", "c"):
        s = kube.task(ns, "twin", t)["status"]
        assert s["state"] == "Cancelled", (t, s)
        c = s["cancellation"]
        assert (c["cancelledBy"], c.get("cancelledByKind"), c.get("cancelledByUid")) == (
            "same", "JobCancellation", jc["metadata"]["uid"]), (t, c)
    a = kube.task(ns, "twin", "a")["status"]["cancellation"]
    assert (a["cancelledBy"], a.get("cancelledByKind"), a.get("cancelledByUid")) == (
        "same", "TaskCancellation", tc["metadata"]["uid"]), a

    # each task counted by exactly one record
    tst = kube.get("taskcancellations", ns, "same")["status"]
    assert (tst["progress"]["tasksCancelled"], tst["progress"]["tasksBlocked"]) == (1, 1), tst["progress"]
    assert jst["progress"]["tasksCancelled"] == 2, jst["progress"]
    assert sorted(x["taskId"] for x in jst["affectedTasks"] if x["after"] == "Cancelled") == ["b", "c"]
    assert [x["taskId"] for x in tst["affectedTasks"] if x["after"] == "Cancelled"] == ["a"]
    assert kube.get("agentjobs", ns, "twin")["status"]["phase"] == "Cancelled"


# ---------------------------------------------------------------------------- 7. deleting a running cancellation
def test_deleting_a_running_cancellation_leaves_the_job_blocked_and_cancellable(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    pods = running_job(kube, ns, "del", ["a", "b", "c"], stop="never", leases=True)
    kube.cancel_job(ns, "first", "del", gracePeriodSeconds=1, escalateAfterSeconds=120)
    wait_for(lambda: step_is(kube, "jobcancellations", ns, "first", "TerminateRunners", "Running"),
             what="first's TerminateRunners Running")
    kube.custom.delete_namespaced_custom_object(G, V, ns, "jobcancellations", "first")
    wait_for(lambda: absent(lambda: kube.get("jobcancellations", ns, "first")), timeout=30, what="first deleted")

    job = kube.get("agentjobs", ns, "del")
    assert job["spec"]["dispatch"]["blocked"] is True, job["spec"]
    assert (job["metadata"].get("labels") or {}).get("necrocode.io/dispatch-blocked") == "true", job["metadata"]
    with pytest.raises(ApiException) as err:
        kube.create_runner(ns, "del", "late", name="del-late-runner")
    assert err.value.status == 403
    assert "job del is being cancelled: dispatch is blocked" in err.value.body

    kube.cancel_job(ns, "again", "del", gracePeriodSeconds=1, escalateAfterSeconds=1)
    st = kube.wait_phase("jobcancellations", ns, "again", timeout=60)["status"]
    assert st.get("duplicateOf") is None, st
    assert st["phase"] == "Completed", st
    assert not [p for p in kube.pods(ns, "necrocode.io/job=del") if p.metadata.name in pods]
    assert kube.pods(ns, "necrocode.io/job=del") == []
    assert {t: kube.task(ns, "del", t)["status"]["state"] for t in ("a", "b", "c")} == {
        "a": "Cancelled", "b": "Cancelled", "c": "Cancelled"}
    for t in ("a", "b", "c"):
        assert lease_released(kube, ns, f"del-slot-{t}"), t
    assert kube.get("agentjobs", ns, "del")["status"]["phase"] == "Cancelled"


# ---------------------------------------------------------------------------- 8. bounded status
@pytest.mark.timeout(600)
def test_a_task_cancellation_of_3000_dependents_keeps_its_status_bounded(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "wide")
    kube.create_task(ns, "wide", "root", "Pending")
    started = time.monotonic()
    tasks_path = nc_path(ns, "agenttasks")

    async def create(k: Kube, i: int) -> None:
        body, status = task_body("wide", f"d{i:04d}", "Pending", depends_on=["root"])
        with contextlib.suppress(AlreadyExists):  # a create retried after a lost answer
            await k.create(tasks_path, body)
        await k.merge_patch(nc_path(ns, "agenttasks", body["metadata"]["name"], "status"), {"status": status})

    bulk(kube.kubeconfig, create, list(range(3000)))
    say(f"3,000 dependents created in {time.monotonic() - started:.1f}s")

    started = time.monotonic()
    kube.cancel_task(ns, "wide-root", "wide", "root", cascade=True)
    obj = kube.wait_phase("taskcancellations", ns, "wide-root", timeout=300)
    say(f"cancelled in {time.monotonic() - started:.1f}s")
    st = obj["status"]
    assert st["phase"] == "Completed", {k: v for k, v in st.items() if k != "affectedTasks"}
    assert len(st["affectedTasks"]) <= 100, len(st["affectedTasks"])
    assert st.get("affectedTasksTotal") == 3001, st.get("affectedTasksTotal")
    assert st["progress"]["tasksCancelled"] == 3001, st["progress"]
    size = len(json.dumps(obj))
    say(f"TaskCancellation object: {size} bytes")
    assert size < 512 * 1024, size  # etcd's limit is 1.5 MiB
    tasks = kube.custom.list_namespaced_custom_object(G, V, ns, "agenttasks", label_selector="necrocode.io/job=wide")
    states = [(t.get("status") or {}).get("state") for t in tasks["items"]]
    assert len(states) == 3001 and set(states) == {"Cancelled"}, {s: states.count(s) for s in set(states)}


@pytest.mark.timeout(1500)
def test_5000_stuck_runners_with_long_finalizers_still_get_a_terminal_status(kube: Kubectl, namespace: str,
                                                                           unreachable_node: str) -> None:
    """On a node no kubelet serves (kwok would mark each runner Running, and answer each force
    delete with deletes of its own that the finalizers refuse: twice the writes for the same test)."""
    ns = namespace
    n = 5000
    finalizers = [f"test.necrocode.io/{i}-" + "f" * 40 for i in range(8)]
    assert all(len(f) == 60 for f in finalizers)
    kube.create_job(ns, "stuck")
    pods_path = core_path(ns, "pods")

    async def create(k: Kube, i: int) -> None:
        with contextlib.suppress(AlreadyExists):  # a create retried after a lost answer
            await k.create(pods_path, runner_pod_body("stuck", f"t{i:04d}", name=f"stuck-t{i:04d}-runner",
                                                      node=unreachable_node, finalizers=finalizers))

    try:
        started = time.monotonic()
        bulk(kube.kubeconfig, create, list(range(n)))
        say(f"{n} runner pods created in {time.monotonic() - started:.1f}s")
        started = time.monotonic()
        kube.cancel_job(ns, "force-stuck", "stuck", force=True)
        obj = kube.wait_phase("jobcancellations", ns, "force-stuck", timeout=600)
        say(f"force-stuck ended {obj['status']['phase']} after {time.monotonic() - started:.1f}s")
        st = obj["status"]
        assert st["phase"] == "PartiallyCompleted", st.get("message")
        assert len(st.get("errors", [])) <= 100, len(st["errors"])
        assert st.get("errorsTotal") == n, st.get("errorsTotal")  # one per stuck runner, none counted twice
        assert st["progress"]["runnersTotal"] == n, st["progress"]
        assert len(st.get("runnerOutcomes", [])) <= 100, len(st["runnerOutcomes"])
        messages = [st.get("message") or ""] + [s.get("message") or "" for s in st["steps"]]
        messages += [c.get("message") or "" for c in st.get("conditions", [])]
        messages += [e.get("message") or "" for e in st.get("errors", [])]
        assert max(len(m) for m in messages) <= 1024, max(messages, key=len)
        say(f"JobCancellation object: {len(json.dumps(obj))} bytes")
    finally:
        started = time.monotonic()
        pods = [p.metadata.name for p in kube.pods(ns, "necrocode.io/job=stuck")]

        async def release(k: Kube, name: str) -> None:
            try:
                await k.json_patch(core_path(ns, "pods", name), [{"op": "remove", "path": "/metadata/finalizers"}])
            except ApiError as exc:
                if exc.status not in (404, 422):
                    raise

        bulk(kube.kubeconfig, release, pods)
        say(f"finalizers of {len(pods)} pods removed in {time.monotonic() - started:.1f}s")


def test_odd_markers_do_not_stop_a_job_cancellation_that_does_not_annotate(kube: Kubectl, namespace: str) -> None:
    """Runners that did not opt in get no annotation from a JobCancellation without a window: an
    odd or stale marker left on them is neither a reason to skip a runner nor rewritten, and
    every runner is counted once."""
    ns = namespace
    tids = list(ODD_MARKERS)
    pods = running_job(kube, ns, "oddn", tids, stop="slow", after=3, grace=10)
    for tid, pod in zip(tids, pods, strict=True):
        set_marker(kube, ns, pod, ODD_MARKERS[tid])
    wait_for(lambda: len(ps := kube.pods(ns, "necrocode.io/job=oddn")) == 4
             and all(p.status.phase == "Running" for p in ps), what="runners Running")

    kube.cancel_job(ns, "stop-oddn", "oddn", reason="odd markers", gracePeriodSeconds=10, escalateAfterSeconds=10)
    seen = watch_markers(kube, ns, "necrocode.io/job=oddn", pods)
    assert seen == {pod: ODD_MARKERS[tid] for tid, pod in zip(tids, pods, strict=True)}, seen

    st = kube.wait_phase("jobcancellations", ns, "stop-oddn", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (4, 4, 0), p
    assert "0 runner(s) annotated" in {s["name"]: s["message"] for s in st["steps"]}["SignalRunners"]
