"""The control plane is a real Kubernetes API server: version, graceful and stuck pod deletion
on kwok nodes, RBAC authorization, ServiceAccount tokens through TokenRequest and TokenReview."""

from __future__ import annotations

import time

import pytest
from kubernetes.client.rest import ApiException

from hack.localcluster import versions
from tests.support.access import allowed
from tests.support.kube import ClusterInfo, Kubectl, wait_for


def test_version_is_the_pinned_kubernetes(kube: Kubectl, cluster: ClusterInfo) -> None:
    from kubernetes import client

    info = client.VersionApi(kube.api).get_code()
    if not cluster.local:
        pytest.skip(f"existing cluster runs {info.git_version}")
    assert info.git_version == versions()["KUBERNETES_VERSION"]
    assert (info.major, info.minor) == ("1", "36")


def test_kwok_nodes_are_ready(kube: Kubectl, cluster: ClusterInfo) -> None:
    if not cluster.local:
        pytest.skip("nodes of an existing cluster are not ours")
    nodes = kube.core.list_node(label_selector="type=kwok").items
    assert len(nodes) >= 1
    for n in nodes:
        assert {c.type: c.status for c in n.status.conditions}["Ready"] == "True"


def _gone(kube: Kubectl, ns: str, name: str) -> bool:
    try:
        kube.core.read_namespaced_pod(name, ns)
        return False
    except ApiException as exc:
        return exc.status == 404


def test_pod_becomes_running_on_a_kwok_node(kube: Kubectl, namespace: str) -> None:
    kube.create_runner(namespace, "j", "t1")
    pod = wait_for(lambda: (p := kube.core.read_namespaced_pod("j-t1-runner", namespace)).status.phase == "Running"
                   and p, what="pod Running")
    assert pod.status.pod_ip


def test_immediate_pod_is_gone_right_after_delete(kube: Kubectl, namespace: str) -> None:
    kube.create_runner(namespace, "j", "t1", stop="immediate")
    started = time.monotonic()
    kube.core.delete_namespaced_pod("j-t1-runner", namespace, grace_period_seconds=30)
    wait_for(lambda: _gone(kube, namespace, "j-t1-runner"), timeout=10, what="pod gone")
    assert time.monotonic() - started < 5


def test_slow_pod_lasts_its_grace_period_then_goes(kube: Kubectl, namespace: str) -> None:
    # it would take 60 s to stop, but the kubelet kills it when the 5 s grace runs out
    kube.create_runner(namespace, "j", "t1", stop="slow", after=60)
    started = time.monotonic()
    kube.core.delete_namespaced_pod("j-t1-runner", namespace, grace_period_seconds=5)
    time.sleep(2.5)
    pod = kube.core.read_namespaced_pod("j-t1-runner", namespace)
    assert pod.metadata.deletion_timestamp is not None
    wait_for(lambda: _gone(kube, namespace, "j-t1-runner"), timeout=20, what="slow pod gone")
    assert 4.0 <= time.monotonic() - started <= 12.0


def test_slow_pod_that_stops_within_its_grace_goes_early(kube: Kubectl, namespace: str) -> None:
    kube.create_runner(namespace, "j", "t1", stop="slow", after=2)
    started = time.monotonic()
    kube.core.delete_namespaced_pod("j-t1-runner", namespace, grace_period_seconds=30)
    wait_for(lambda: _gone(kube, namespace, "j-t1-runner"), timeout=20, what="slow pod gone")
    assert 1.5 <= time.monotonic() - started <= 10.0


def test_pod_on_a_lost_node_stays_until_force_deleted(kube: Kubectl, namespace: str) -> None:
    kube.create_runner(namespace, "j", "t1", stop="never")
    kube.core.delete_namespaced_pod("j-t1-runner", namespace, grace_period_seconds=1)
    time.sleep(4)
    pod = kube.core.read_namespaced_pod("j-t1-runner", namespace)
    assert pod.metadata.deletion_timestamp is not None  # Terminating, past its grace
    kube.core.delete_namespaced_pod("j-t1-runner", namespace, grace_period_seconds=0)
    wait_for(lambda: _gone(kube, namespace, "j-t1-runner"), timeout=5, what="force-deleted pod gone")


def test_subject_access_review_denies_a_user_without_a_role(kube: Kubectl, namespace: str) -> None:
    assert not allowed(kube, "mallory", "create", "jobcancellations", namespace, "necrocode.io")


def test_subject_access_review_allows_a_user_with_a_role(kube: Kubectl, namespace: str) -> None:
    kube.rbac.create_namespaced_role(namespace, {"metadata": {"name": "canceller"}, "rules": [
        {"apiGroups": ["necrocode.io"], "resources": ["jobcancellations"], "verbs": ["create"]}]})
    kube.rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "alice-canceller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canceller"},
        "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})
    # the RBAC authorizer reads Roles and RoleBindings from an informer cache: a binding just
    # created takes effect within moments, not at once (a first review may still say no)
    wait_for(lambda: allowed(kube, "alice", "create", "jobcancellations", namespace, "necrocode.io"),
             timeout=15, what="alice allowed to create jobcancellations")


def test_token_request_token_authenticates_through_token_review(kube: Kubectl, namespace: str) -> None:
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "console"}})
    token = kube.core.create_namespaced_service_account_token(
        "console", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    review = kube.authn.create_token_review({"spec": {"token": token}})
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{namespace}:console"
    bogus = kube.authn.create_token_review({"spec": {"token": token[:-4] + "AAAA"}})
    assert not bogus.status.authenticated


def test_impersonation_is_authorized_by_rbac(kube: Kubectl, namespace: str) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kube.kubeconfig))
    api.default_headers["Impersonate-User"] = "mallory"
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
    assert err.value.status == 403
    assert "mallory" in err.value.body
