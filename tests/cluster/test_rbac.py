"""Least privilege, proven on the real control plane with real ServiceAccount tokens
(TokenRequest), docs/rbac.md:

- the users' ClusterRoles (deploy/user-roles.yaml): a ServiceAccount bound to
  necrocode-cancel-edit in its namespace cancels, follows and lists with the real CLI (and
  kubectl deletes a record, and `cancel --force` escalates a running graceful cancellation, a
  patch of its spec.force); one bound to necrocode-cancel-view reads, and its cancel fails with
  the CLI's one-line forbidden error; the clusterrole-aggregation controller adds them to the
  built-in edit/admin and view roles, and none of them grants `vouch`;
- the operator in namespaced mode with only the RBAC the chart renders for it (Roles in the
  served namespace and the leader Role, nothing cluster-wide) does a whole job cancellation,
  and the API server's own authorizer says it may not touch pods outside that namespace nor
  Secrets anywhere (until operator.includeSecrets, and then only there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.support.access import allowed
from tests.support.kube import ClusterInfo, G, Kubectl, absent, operator_env, sa_kubeconfig, wait_for
from tests.support.operators import refusals

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"
USER_ROLES = REPO / "deploy" / "user-roles.yaml"
EDIT, VIEW = "necrocode-cancel-edit", "necrocode-cancel-view"
KINDS = ("jobcancellations", "taskcancellations")


# ----------------------------------------------------------------------------- helpers
def account(kube: Kubectl, cluster: ClusterInfo, ns: str, name: str, path: Path) -> tuple[str, Path]:
    """A new ServiceAccount: its username and a kubeconfig of its token."""
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    return f"system:serviceaccount:{ns}:{name}", sa_kubeconfig(kube, cluster.kubeconfig, path, ns, name)


def bind(kube: Kubectl, ns: str, name: str, kind: str, role: str, sa: str) -> None:
    kube.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})


def bound_account(kube: Kubectl, cluster: ClusterInfo, ns: str, name: str, role: str, verb: str,
                  path: Path) -> tuple[str, Path]:
    """A new ServiceAccount bound to ClusterRole `role` in `ns`, once RBAC lets it `verb` cancellations."""
    user, kc = account(kube, cluster, ns, name, path)
    bind(kube, ns, name, "ClusterRole", role, name)
    wait_for(lambda: allowed(kube, user, verb, "jobcancellations", ns, G), what="RoleBinding in effect")
    return user, kc


def cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `necrocode` CLI, in its own process, with only the given kubeconfig."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    out = subprocess.run([sys.executable, "-m", "necrocode.cli", *args, "--kubeconfig", str(kubeconfig)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    return out


def kubectl(cluster: ClusterInfo, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from hack.localcluster import CACHE

    binary = (cluster.bins or CACHE / "bin") / "kubectl"
    if not binary.exists():
        pytest.skip("kubectl not built (make tools)")
    return subprocess.run([str(binary), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=60)


def necrocode_rules(role: Any) -> list[Any]:
    return [r for r in (role.rules or []) if G in (r.api_groups or [])]


def grants(role: Any, verb: str, resource: str) -> bool:
    return any(verb in r.verbs and resource in r.resources for r in necrocode_rules(role))


# ----------------------------------------------------------------------------- the users' roles
@pytest.fixture(scope="module")
def user_roles(kube: Kubectl, cluster: ClusterInfo) -> Iterator[None]:
    """deploy/user-roles.yaml applied (or already there, installed by the chart), and aggregated
    into the built-in roles by kube-controller-manager's clusterrole-aggregation controller."""
    created = []
    for doc in yaml.safe_load_all(USER_ROLES.read_text()):
        name = doc["metadata"]["name"]
        try:
            kube.rbac.read_cluster_role(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            if not cluster.local and not os.environ.get("NECROCODE_TEST_CLUSTER_SCOPED"):
                pytest.skip("adds rules to the built-in edit/admin/view roles: only on the local control plane "
                            "(or set NECROCODE_TEST_CLUSTER_SCOPED=1)")
            kube.rbac.create_cluster_role(doc)
            created.append(name)
    try:
        for builtin, verb, ours in (("admin", "create", EDIT), ("edit", "create", EDIT), ("view", "list", VIEW)):
            wait_for(lambda b=builtin, v=verb: all(grants(kube.rbac.read_cluster_role(b), v, k) for k in KINDS),
                     what=f"{ours} aggregated into {builtin}")
        yield
    finally:
        for name in created:
            kube.rbac.delete_cluster_role(name)


def test_user_roles_are_aggregated_and_none_grants_vouch(kube: Kubectl, user_roles: None, namespace: str) -> None:
    edit, admin, view = (kube.rbac.read_cluster_role(n) for n in ("edit", "admin", "view"))
    for role in (edit, admin):
        assert all(grants(role, v, k) for v in ("create", "get", "list", "watch", "delete") for k in KINDS)
        assert all(grants(role, v, k) for v in ("get", "list", "watch") for k in ("agentjobs", "agenttasks"))
    assert all(grants(view, v, k) for v in ("get", "list", "watch") for k in (*KINDS, "agentjobs", "agenttasks"))
    assert not any(grants(view, v, k) for v in ("create", "delete") for k in KINDS)
    for role in (edit, admin, view):  # nothing beyond what the CLI, kubectl and the REST API use
        for rule in necrocode_rules(role):
            assert not {"vouch", "update", "*"} & set(rule.verbs), (role.metadata.name, rule)
            assert not any("/" in r or r == "*" for r in rule.resources), (role.metadata.name, rule)
            # patch: the escalation (the CRD lets only spec.force change, from false to true)
            assert "patch" not in rule.verbs or set(rule.resources) <= set(KINDS), (role.metadata.name, rule)
    assert all(grants(role, "patch", k) for role in (edit, admin) for k in KINDS)
    assert not any(grants(view, "patch", k) for k in KINDS)

    # and through the API server's authorizer: accounts bound to the built-in roles
    ns = namespace
    for builtin in ("admin", "edit", "view"):
        kube.core.create_namespaced_service_account(ns, {"metadata": {"name": f"as-{builtin}"}})
        bind(kube, ns, f"as-{builtin}", "ClusterRole", builtin, f"as-{builtin}")
    user = f"system:serviceaccount:{ns}:as-"
    wait_for(lambda: allowed(kube, user + "view", "list", "jobcancellations", ns, G), what="RoleBindings in effect")
    for builtin in ("admin", "edit"):
        assert allowed(kube, user + builtin, "create", "jobcancellations", ns, G)
        assert allowed(kube, user + builtin, "delete", "taskcancellations", ns, G)
    assert not allowed(kube, user + "view", "create", "jobcancellations", ns, G)
    for builtin in ("admin", "edit", "view"):  # the REST API's own privilege stays its own
        for kind in KINDS:
            assert not allowed(kube, user + builtin, "vouch", kind, ns, G)
            assert not allowed(kube, user + builtin, "patch", kind, ns, G, subresource="status")
            assert allowed(kube, user + builtin, "patch", kind, ns, G) == (builtin != "view")


@pytest.mark.usefixtures("operator")
def test_edit_role_cancels_follows_and_lists_with_the_cli(kube: Kubectl, cluster: ClusterInfo, user_roles: None,
                                                        namespace: str, tmp_path: Path) -> None:
    ns = namespace
    user, kc = bound_account(kube, cluster, ns, "canceller", EDIT, "create", tmp_path / "edit.kubeconfig")
    for job in ("job1", "job2"):
        kube.create_job(ns, job)
        kube.create_runner(ns, job, "a", stop="immediate", grace=1)
        kube.create_task(ns, job, "a", "Running", runner=f"{job}-a-runner")
        kube.create_task(ns, job, "b", "Pending", depends_on=["a"])

    # cancel a job, following it to the end
    res = cli(kc, "job", "cancel", "job1", "-n", ns, "--reason", "rbac", "--grace-period", "1")
    assert res.returncode == 0, res.stderr
    assert f"in namespace {ns}: Completed" in res.stdout, res.stdout
    # cancel one task (the CLI lists the job's tasks first), without waiting
    res = cli(kc, "job", "cancel", "job2", "--task", "a", "-n", ns, "--no-wait", "-o", "json")
    assert res.returncode == 0, res.stderr
    task_cancellation = json.loads(res.stdout)["metadata"]["name"]
    # status and history
    res = cli(kc, "job", "cancel-status", "job1", "-n", ns)
    assert res.returncode == 0 and "phase:      Completed" in res.stdout, res.stdout + res.stderr
    res = cli(kc, "job", "cancellations", "-n", ns, "-o", "json")
    assert res.returncode == 0, res.stderr
    names = {i["metadata"]["name"]: i["kind"] for i in json.loads(res.stdout)["items"]}
    assert names[task_cancellation] == "TaskCancellation" and "JobCancellation" in names.values()
    kube.wait_phase("taskcancellations", ns, task_cancellation)

    # kubectl: read everything of NecroCode's, delete a record
    out = kubectl(cluster, kc, "get", "jobcancellations,taskcancellations,agentjobs,agenttasks", "-n", ns, "-o", "name")
    assert out.returncode == 0 and f"taskcancellation.necrocode.io/{task_cancellation}" in out.stdout, out.stderr
    out = kubectl(cluster, kc, "delete", "taskcancellation", task_cancellation, "-n", ns, "--wait=false")
    assert out.returncode == 0, out.stderr

    # escalate a running graceful cancellation with --force: a patch of its spec.force
    kube.create_job(ns, "job3")
    kube.create_runner(ns, "job3", "a", stop="never", grace=300)
    kube.create_task(ns, "job3", "a", "Running", runner="job3-a-runner")
    res = cli(kc, "job", "cancel", "job3", "-n", ns, "--grace-period", "300", "--no-wait", "-o", "json")
    assert res.returncode == 0, res.stderr
    graceful = json.loads(res.stdout)["metadata"]["name"]
    res = cli(kc, "job", "cancel", "job3", "-n", ns, "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"jobcancellation.necrocode.io/{graceful} escalated to force" in res.stdout, res.stdout
    escalated = kube.get("jobcancellations", ns, graceful)
    assert escalated["metadata"]["annotations"]["necrocode.io/force-requester"] == user
    assert escalated["status"]["phase"] == "Completed" and escalated["status"]["progress"]["runnersForced"] == 1

    # what the REST API asks for its callers (api/server.py), and nothing more
    for kind in KINDS:
        assert all(allowed(kube, user, verb, kind, ns, G)
                   for verb in ("create", "get", "list", "watch", "delete", "patch"))
        for verb, sub in (("vouch", ""), ("update", ""), ("patch", "status"), ("update", "status")):
            assert not allowed(kube, user, verb, kind, ns, G, subresource=sub), (verb, kind, sub)
        assert not allowed(kube, user, "create", kind, "default", G)  # only where it is bound
    assert not allowed(kube, user, "patch", "agentjobs", ns, G)
    assert not allowed(kube, user, "delete", "agenttasks", ns, G)
    assert not allowed(kube, user, "get", "pods", ns)
    assert not allowed(kube, user, "get", "secrets", ns)


@pytest.mark.usefixtures("operator")
def test_view_role_reads_and_its_cancel_is_one_forbidden_line(kube: Kubectl, cluster: ClusterInfo, user_roles: None,
                                                              namespace: str, tmp_path: Path) -> None:
    ns = namespace
    user, kc = bound_account(kube, cluster, ns, "watcher", VIEW, "list", tmp_path / "view.kubeconfig")
    kube.create_job(ns, "job1")
    kube.create_task(ns, "job1", "a", "Pending")
    kube.cancel_job(ns, "by-admin", "job1")
    kube.wait_phase("jobcancellations", ns, "by-admin")

    res = cli(kc, "job", "cancel-status", "job1", "-n", ns)
    assert res.returncode == 0 and "jobcancellation/by-admin" in res.stdout, res.stdout + res.stderr
    res = cli(kc, "job", "cancellations", "-n", ns, "-o", "json")
    assert res.returncode == 0, res.stderr
    assert [i["metadata"]["name"] for i in json.loads(res.stdout)["items"]] == ["by-admin"]
    out = kubectl(cluster, kc, "get", "jobcancellations,agentjobs,agenttasks", "-n", ns, "-o", "name")
    assert out.returncode == 0 and "jobcancellation.necrocode.io/by-admin" in out.stdout, out.stderr

    for args, kind in ((["job1"], "jobcancellations"), (["job1", "--task", "a"], "taskcancellations")):
        res = cli(kc, "job", "cancel", *args, "-n", ns)
        assert res.returncode == 8, res.stdout + res.stderr
        assert res.stdout == ""
        assert res.stderr == f'error: forbidden: user "{user}" cannot create {kind}.{G} in namespace {ns}\n'
    res = cli(kc, "job", "cancellations", "-A")
    assert res.returncode == 8
    assert res.stderr == f'error: forbidden: user "{user}" cannot list jobcancellations.{G} across all namespaces\n'
    out = kubectl(cluster, kc, "delete", "jobcancellation", "by-admin", "-n", ns)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr
    assert [o["metadata"]["name"] for o in kube.custom.list_namespaced_custom_object(
        G, "v1alpha1", ns, "jobcancellations")["items"]] == ["by-admin"]
    for kind in KINDS:
        assert all(allowed(kube, user, verb, kind, ns, G) for verb in ("get", "list", "watch"))
        assert not any(allowed(kube, user, verb, kind, ns, G) for verb in ("create", "delete", "vouch", "patch"))


# ----------------------------------------------------------------------------- the operator, namespaced
@pytest.fixture
def three_namespaces(kube: Kubectl) -> Iterator[tuple[str, str, str]]:
    """The release's namespace, the one it serves and one it does not (none served by the
    session's operator)."""
    suffix = uuid.uuid4().hex[:6]
    names = (f"solo-ops-{suffix}", f"solo-served-{suffix}", f"solo-other-{suffix}")
    for ns in names:
        kube.create_namespace(ns)
    try:
        yield names
    finally:
        for ns in names:
            kube.delete_namespace(ns)


def render_rbac(cluster: ClusterInfo, release_ns: str, *sets: str) -> list[dict[str, Any]]:
    """The operator's ServiceAccount and RBAC as the chart renders them (release `rel`)."""
    from hack.localcluster import CACHE

    helm = (cluster.bins or CACHE / "bin") / "helm"
    if not helm.exists():
        pytest.skip("helm not built (make tools)")
    args = [str(helm), "template", "rel", str(CHART), "--namespace", release_ns, "--kube-version", "1.36.3",
            "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def apply(kube: Kubectl, doc: dict[str, Any]) -> None:
    ns, name = doc["metadata"].get("namespace"), doc["metadata"]["name"]
    if doc["kind"] == "ServiceAccount":
        kube.core.create_namespaced_service_account(ns, doc)
    elif doc["kind"] == "Role":
        try:
            kube.rbac.replace_namespaced_role(name, ns, doc)
        except ApiException as exc:
            if exc.status != 404:
                raise
            kube.rbac.create_namespaced_role(ns, doc)
    elif doc["kind"] == "RoleBinding":
        try:
            kube.rbac.create_namespaced_role_binding(ns, doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
    else:
        raise AssertionError(f"namespaced mode rendered a {doc['kind']} for the operator")


def test_namespaced_operator_works_with_only_the_charts_rbac(kube: Kubectl, cluster: ClusterInfo, tmp_path: Path,
                                                             three_namespaces: tuple[str, str, str]) -> None:
    if os.environ.get("NECROCODE_TEST_EXTERNAL_OPERATOR"):
        pytest.skip("an operator installed in the cluster serves every namespace")
    ops, served, other = three_namespaces
    docs = render_rbac(cluster, ops, f"watchNamespaces={{{served}}}")
    # nothing cluster-wide: a Role where it serves, and the leader Lease's Role where it runs
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in docs) == sorted([
        ("ServiceAccount", ops), ("Role", served), ("RoleBinding", served), ("Role", ops), ("RoleBinding", ops)])
    for doc in docs:
        apply(kube, doc)
    sa = "rel-necrocode-cancel"
    user = f"system:serviceaccount:{ops}:{sa}"
    wait_for(lambda: allowed(kube, user, "delete", "pods", served), what="Roles in effect")

    # the API server's authorizer: only what the served namespace needs, and the leader Lease
    assert allowed(kube, user, "patch", "pods", served) and allowed(kube, user, "update", "leases", served,
                                                                    "coordination.k8s.io")
    assert allowed(kube, user, "create", "localsubjectaccessreviews", served, "authorization.k8s.io")
    assert allowed(kube, user, "update", "leases", ops, "coordination.k8s.io", name="rel-necrocode-cancel-leader")
    for ns in (other, ops, None):
        assert not allowed(kube, user, "patch", "pods", ns), ns
        assert not allowed(kube, user, "delete", "pods", ns), ns
        assert not allowed(kube, user, "list", "pods", ns), ns
    for ns in (served, other, ops, None):
        for verb in ("get", "list", "watch", "delete"):
            assert not allowed(kube, user, verb, "secrets", ns), (verb, ns)
    assert not allowed(kube, user, "update", "leases", other, "coordination.k8s.io")
    assert not allowed(kube, user, "update", "leases", ops, "coordination.k8s.io", name="someone-elses")
    assert not allowed(kube, user, "update", "leases", "kube-system", "coordination.k8s.io", name="kube-scheduler")
    assert not allowed(kube, user, "create", "leases", served, "coordination.k8s.io")
    assert not allowed(kube, user, "list", "namespaces")
    assert not allowed(kube, user, "list", "customresourcedefinitions", group="apiextensions.k8s.io")
    assert not allowed(kube, user, "create", "pods", served)
    assert not allowed(kube, user, "create", "pods", served, subresource="exec")
    assert not allowed(kube, user, "create", "jobcancellations", served, G)
    assert not allowed(kube, user, "list", "jobcancellations", other, G)

    # the operator, with a kubeconfig of only that token, as the chart runs it (leader election on)
    kc = sa_kubeconfig(kube, cluster.kubeconfig, tmp_path / "operator.kubeconfig", ops, sa)
    log = tmp_path / "operator.log"
    env = {**os.environ, **operator_env(cluster), "KUBECONFIG": str(kc), "NECROCODE_KUBECONFIG": str(kc)}
    env.pop("NECROCODE_INCLUDE_SECRETS", None)
    for ns, stop in ((served, "never"), (other, "immediate")):  # never: a lost node, so the escalation forces it
        kube.create_job(ns, "job")
        kube.create_runner(ns, "job", "a", stop=stop, grace=1)
        kube.create_task(ns, "job", "a", "Running", runner="job-a-runner", slot="slot-a")
        kube.create_task(ns, "job", "b", "Pending", depends_on=["a"])
        kube.create_lease(ns, "slot-a", job="job", task_id="a", holder="job-a-runner")
        kube.create_configmap(ns, "job-scratch", "job", "scratch", task_id="a")
        kube.create_configmap(ns, "job-diff", "job", "artifact", task_id="a")
        kube.core.create_namespaced_secret(ns, {"metadata": {"name": "job-token", "labels": {
            "necrocode.io/job": "job", "necrocode.io/scratch": "true"}}, "stringData": {"k": "v"}})
    op = subprocess.Popen([sys.executable, "-m", "necrocode.main", "--namespace", served, "--liveness", "",
                           "--leader-elect", "--leader-namespace", ops, "--leader-lease", "rel-necrocode-cancel-leader"],
                          env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        for ns in (served, other):
            kube.cancel_job(ns, "jc", "job", gracePeriodSeconds=1, escalateAfterSeconds=1, ttlSecondsAfterFinished=1)
        jc = kube.wait_phase("jobcancellations", served, "jc", timeout=60)
        # its TTL: the operator deletes the record (and lets its own finalizer go)
        wait_for(lambda: absent(lambda: kube.get("jobcancellations", served, "jc")), timeout=30,
                 what="the record deleted after its TTL")
    finally:
        op.terminate()
        op.wait(timeout=30)
    text = log.read_text()
    status = jc["status"]
    assert status["phase"] == "Completed", (status, text[-3000:])
    p = status["progress"]
    assert (p["runnersForced"], p["tasksCancelled"], p["leasesReleased"], p["resourcesDeleted"]) == (1, 2, 1, 1), p
    assert kube.core.read_namespaced_secret("job-token", served).metadata.name  # Secrets: never asked, untouched
    assert kube.core.read_namespaced_config_map("job-diff", served).metadata.name
    assert kube.events_for(served, "jc")  # its Events were written
    assert not refusals(text), (refusals(text), text[-3000:])
    lease = kube.coord.read_namespaced_lease("rel-necrocode-cancel-leader", ops)
    assert lease.spec.lease_duration_seconds  # it led, with the leader Role alone
    # the namespace it does not serve: untouched
    assert "status" not in kube.get("jobcancellations", other, "jc")
    assert [p.metadata.name for p in kube.pods(other, "necrocode.io/job=job")] == ["job-a-runner"]
    assert kube.task(other, "job", "a")["status"]["state"] == "Running"

    # operator.includeSecrets adds Secrets exactly where it serves
    for doc in render_rbac(cluster, ops, f"watchNamespaces={{{served}}}", "operator.includeSecrets=true"):
        if doc["kind"] == "Role":
            apply(kube, doc)
    wait_for(lambda: allowed(kube, user, "delete", "secrets", served), what="secrets granted")
    assert allowed(kube, user, "list", "secrets", served)
    assert not allowed(kube, user, "get", "secrets", served)  # listed by label, deleted by name: no get
    for ns in (other, ops, None):
        assert not allowed(kube, user, "list", "secrets", ns) and not allowed(kube, user, "delete", "secrets", ns)

