"""Who asked, and may they: the requester recorded by the API server, and no confused deputy.

- the requester of a cancellation is the authenticated user who created it, written by the
  API server (deploy/requester-policy.yaml); what a client writes there (or in spec.requestedBy)
  is overwritten, and nobody can change it afterwards;
- status, the cancelled tasks' records, the Started Event and `kubectl get jc` show it;
- preserveArtifacts: false deletes artifacts only when the requester may delete them (the
  operator asks a LocalSubjectAccessReview); otherwise they are kept and the status says why;
- a job deleted and created again under its old name: a cancellation of the new one never
  reaches the older one's runners, scratch or artifacts (job-uid label, owner reference, or
  created before the job).

Two real ServiceAccounts, with TokenRequest tokens, create the cancellations.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.support.access import allowed
from tests.support.kube import ClusterInfo, G, Kubectl, V, absent, sa_kubeconfig, wait_for

pytestmark = pytest.mark.usefixtures("operator")

REQUESTER = "necrocode.io/requester"
GROUPS = "necrocode.io/requester-groups"
FORCER = "necrocode.io/force-requester"


@dataclass
class Account:
    """A ServiceAccount and a client that speaks with its token."""

    name: str
    username: str
    custom: client.CustomObjectsApi


def _account(kube: Kubectl, cluster: ClusterInfo, tmp: Path, ns: str, name: str,
             rules: list[dict[str, Any]]) -> Account:
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    kube.rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": rules})
    kube.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
    username = f"system:serviceaccount:{ns}:{name}"
    wait_for(lambda: allowed(kube, username, "create", "jobcancellations", ns, G), what=f"RBAC for {name}")
    kc = sa_kubeconfig(kube, cluster.kubeconfig, tmp / f"{name}.kubeconfig", ns, name)
    api = config.new_client_from_config(config_file=str(kc))
    return Account(name, username, client.CustomObjectsApi(api))


CANCEL_RULES = [{"apiGroups": [G], "resources": ["jobcancellations", "taskcancellations"],
                 "verbs": ["create", "get", "list", "watch", "update", "patch"]}]
DELETE_ARTIFACT_RULES = [{"apiGroups": [""], "resources": ["configmaps", "persistentvolumeclaims"],
                          "verbs": ["delete"]}]


@pytest.fixture
def accounts(kube: Kubectl, cluster: ClusterInfo, namespace: str, tmp_path: Path) -> Iterator[tuple[Account, Account]]:
    """alice may cancel; bob may cancel and delete ConfigMaps and PVCs in the namespace."""
    yield (_account(kube, cluster, tmp_path, namespace, "alice", CANCEL_RULES),
           _account(kube, cluster, tmp_path, namespace, "bob", CANCEL_RULES + DELETE_ARTIFACT_RULES))


def _cancel(who: Account, ns: str, name: str, job: str, annotations: dict[str, str] | None = None,
            **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return who.custom.create_namespaced_custom_object(G, V, ns, "jobcancellations", {
        "apiVersion": f"{G}/{V}", "kind": "JobCancellation", "metadata": meta, "spec": {"jobName": job, **spec}})


def _small_job(kube: Kubectl, ns: str, job: str) -> None:
    kube.create_job(ns, job)
    kube.create_runner(ns, job, "t1", name=f"{job}-t1-runner")
    kube.create_task(ns, job, "t1", "Running", runner=f"{job}-t1-runner")
    kube.create_configmap(ns, f"{job}-diff", job, "artifact")
    kube.create_pvc(ns, f"{job}-results", job, "artifact")
    kube.create_configmap(ns, f"{job}-scratch", job, "scratch")


# ----------------------------------------------------------------------------- identity
def test_the_requester_is_who_created_it_not_who_it_claims(kube: Kubectl, namespace: str, cluster: ClusterInfo,
                                                           accounts: tuple[Account, Account]) -> None:
    alice, bob = accounts
    _small_job(kube, namespace, "j1")
    created = _cancel(alice, namespace, "stop", "j1", annotations={REQUESTER: bob.username, GROUPS: "system:masters",
                                                                    FORCER: bob.username}, requestedBy=bob.username)
    meta = created["metadata"]
    assert meta["annotations"][REQUESTER] == alice.username  # overwritten at admission
    assert FORCER not in meta["annotations"]  # nobody escalated it: set only when spec.force turns true
    groups = meta["annotations"][GROUPS].split(",")
    assert "system:masters" not in groups and f"system:serviceaccounts:{namespace}" in groups

    done = kube.wait_phase("jobcancellations", namespace, "stop")
    assert done["status"]["phase"] == "Completed", done["status"]
    assert done["status"]["requestedBy"] == alice.username and done["status"]["requesterVerified"] is True
    record = kube.task(namespace, "j1", "t1")["status"]["cancellation"]
    assert record["requestedBy"] == alice.username and record["requesterVerified"] is True
    started = wait_for(lambda: [e for e in kube.events_for(namespace, "stop") if e.reason == "Started"],
                       what="the Started Event")
    assert alice.username in started[0].message and bob.username not in started[0].message

    tc = alice.custom.create_namespaced_custom_object(G, V, namespace, "taskcancellations", {
        "apiVersion": f"{G}/{V}", "kind": "TaskCancellation",
        "metadata": {"name": "stop-t1", "annotations": {REQUESTER: bob.username}},
        "spec": {"jobName": "j1", "taskId": "t1"}})
    assert tc["metadata"]["annotations"][REQUESTER] == alice.username

    table = subprocess.run([str(cluster.bins / "kubectl") if cluster.bins else "kubectl",
                            "--kubeconfig", str(cluster.kubeconfig), "get", "jc", "-n", namespace],
                           capture_output=True, text=True, check=True).stdout
    header, row = table.splitlines()[:2]
    assert "REQUESTER" in header.split() and alice.username in row.split(), table


def test_nobody_can_change_the_recorded_requester(kube: Kubectl, namespace: str,
                                                  accounts: tuple[Account, Account]) -> None:
    alice, bob = accounts
    kube.create_job(namespace, "j2")
    _cancel(alice, namespace, "stop", "j2")
    for who in (alice, None):  # the creator, and even a cluster admin
        api = who.custom if who else kube.custom
        with pytest.raises(ApiException) as refused:
            api.patch_namespaced_custom_object(G, V, namespace, "jobcancellations", "stop",
                                               {"metadata": {"annotations": {REQUESTER: bob.username}}})
        assert refused.value.status in (403, 422) and "cannot be changed" in refused.value.body
        with pytest.raises(ApiException):
            api.patch_namespaced_custom_object(G, V, namespace, "jobcancellations", "stop",
                                               {"metadata": {"annotations": {REQUESTER: None}}})
    assert kube.get("jobcancellations", namespace, "stop")["metadata"]["annotations"][REQUESTER] == alice.username


# ----------------------------------------------------------------------------- confused deputy
def test_artifacts_are_deleted_only_for_a_requester_who_may_delete_them(
        kube: Kubectl, namespace: str, accounts: tuple[Account, Account]) -> None:
    alice, bob = accounts
    _small_job(kube, namespace, "ja")
    _small_job(kube, namespace, "jb")

    _cancel(alice, namespace, "by-alice", "ja", preserveArtifacts=False)
    st = kube.wait_phase("jobcancellations", namespace, "by-alice")["status"]
    assert st["phase"] == "Completed", st
    assert kube.core.read_namespaced_config_map("ja-diff", namespace)  # kept
    assert kube.core.read_namespaced_persistent_volume_claim("ja-results", namespace)
    assert absent(lambda: kube.core.read_namespaced_config_map("ja-scratch", namespace))  # scratch still goes
    assert f"{alice.username} may not delete configmaps" in st["artifactsKeptReason"]
    assert sorted(st["cleanup"]["preserved"]) == ["configmap/ja-diff", "persistentvolumeclaim/ja-results"]
    kept = next(c for c in st["conditions"] if c["type"] == "ArtifactsKept")
    assert kept["status"] == "True" and kept["reason"] == "RequesterMayNotDelete"
    assert any(e.reason == "ArtifactsKept" for e in kube.events_for(namespace, "by-alice"))

    _cancel(bob, namespace, "by-bob", "jb", preserveArtifacts=False)
    st = kube.wait_phase("jobcancellations", namespace, "by-bob")["status"]
    assert st["phase"] == "Completed" and "artifactsKeptReason" not in st, st
    assert absent(lambda: kube.core.read_namespaced_config_map("jb-diff", namespace))
    wait_for(lambda: absent(lambda: kube.core.read_namespaced_persistent_volume_claim("jb-results", namespace))
             or kube.core.read_namespaced_persistent_volume_claim("jb-results", namespace).metadata.deletion_timestamp,
             what="jb-results deleted")


def test_a_recreated_job_never_reaches_the_older_jobs_objects(kube: Kubectl, namespace: str) -> None:
    """The old AgentJob `j` left a runner, scratch and an artifact; it is deleted and created
    again. Its leftovers are told apart by a job-uid label, by an owner reference, or (an
    artifact, which deleting would destroy) by being older than the new job."""
    old = kube.create_job(namespace, "j")
    old_uid = old["metadata"]["uid"]
    # owned by another live AgentJob (an owner reference to the deleted job would be garbage collected)
    other = kube.create_job(namespace, "other")
    owner = [{"apiVersion": f"{G}/{V}", "kind": "AgentJob", "name": "other", "uid": other["metadata"]["uid"]}]
    kube.create_runner(namespace, "j", "t0", name="old-runner")
    kube.core.patch_namespaced_pod("old-runner", namespace, {"metadata": {"labels": {"necrocode.io/job-uid": old_uid}}})
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "old-owned", "ownerReferences": owner,
        "labels": {"necrocode.io/job": "j", "necrocode.io/scratch": "true"}}})
    kube.create_configmap(namespace, "old-artifact", "j", "artifact")
    kube.custom.delete_namespaced_custom_object(G, V, namespace, "agentjobs", "j")
    # the API server stamps seconds: recreate until the new job is visibly younger than the leftovers
    newest = kube.core.read_namespaced_config_map("old-artifact", namespace).metadata.creation_timestamp

    def recreated() -> dict[str, Any] | None:
        job = kube.create_job(namespace, "j")
        if job["metadata"]["creationTimestamp"] > newest.strftime("%Y-%m-%dT%H:%M:%SZ"):
            return job
        kube.custom.delete_namespaced_custom_object(G, V, namespace, "agentjobs", "j")
        wait_for(lambda: absent(lambda: kube.get("agentjobs", namespace, "j")), what="job j deleted")
        return None

    new = wait_for(recreated, timeout=30, interval=0.3, what="job j recreated after its leftovers")
    new_uid = new["metadata"]["uid"]
    kube.create_runner(namespace, "j", "t1", name="new-runner")
    kube.create_task(namespace, "j", "t1", "Running", runner="new-runner")
    kube.create_configmap(namespace, "new-scratch", "j", "scratch")
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "new-labelled", "labels": {
        "necrocode.io/job": "j", "necrocode.io/artifact": "true", "necrocode.io/job-uid": new_uid}}})
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "new-owned", "ownerReferences": [
        {"apiVersion": f"{G}/{V}", "kind": "AgentJob", "name": "j", "uid": new_uid}],
        "labels": {"necrocode.io/job": "j", "necrocode.io/scratch": "true"}}})

    kube.cancel_job(namespace, "stop", "j", preserveArtifacts=False, gracePeriodSeconds=0)
    st = kube.wait_phase("jobcancellations", namespace, "stop")["status"]
    assert st["phase"] == "Completed", st
    assert st["jobUid"] == new_uid
    # the new instance's runner, scratch and (admin may delete them) artifacts went
    wait_for(lambda: absent(lambda: kube.core.read_namespaced_pod("new-runner", namespace)), what="new runner gone")
    for gone in ("new-scratch", "new-labelled", "new-owned"):
        assert absent(lambda n=gone: kube.core.read_namespaced_config_map(n, namespace)), gone
    # the old one's are untouched
    old_pod = kube.core.read_namespaced_pod("old-runner", namespace)
    assert old_pod.metadata.deletion_timestamp is None
    assert "necrocode.io/cancel-requested" not in (old_pod.metadata.annotations or {})
    for kept in ("old-owned", "old-artifact"):
        assert kube.core.read_namespaced_config_map(kept, namespace).metadata.deletion_timestamp is None, kept
    assert st["progress"]["runnersTotal"] == 1
