"""The Helm chart on the real control plane: rendered manifests validated by kubeconform (strict,
with schemas taken from this API server, CRDs included), `helm install` and `helm uninstall`,
and least-privilege RBAC proven by running the operator with the chart's ServiceAccount token."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import operator_env
from kube_helpers import ClusterInfo, Kubectl, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"
LOCATION = "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
GROUP_VERSIONS = ["api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1", "apis/policy/v1",
                  "apis/admissionregistration.k8s.io/v1", "apis/necrocode.io/v1alpha1"]


def tool(cluster: ClusterInfo, name: str) -> str:
    from localcluster import CACHE

    path = (cluster.bins or CACHE / "bin") / name
    if not path.exists():
        pytest.skip(f"{name} not built (make tools)")
    return str(path)


def _strict(node: Any) -> Any:
    """Close every object schema (additionalProperties: false) unless it keeps unknown fields."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "$ref" in out:
            out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
        if "properties" in out and "additionalProperties" not in out and \
                not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def kubeconform_schemas(kube: Kubectl, into: Path) -> Path:
    """One JSON schema per kind, from the API server's OpenAPI v3 (the CRDs' schemas included)."""
    into.mkdir(parents=True, exist_ok=True)
    for gv in GROUP_VERSIONS:
        resp = kube.api.rest_client.pool_manager.request("GET", f"{kube.api.configuration.host}/openapi/v3/{gv}")
        assert resp.status == 200, resp.data[:300]
        doc = json.loads(resp.data)
        defs = _strict(doc["components"]["schemas"])
        for schema in defs.values():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                group = gvk["group"]
                # kubeconform's {{ .KindSuffix }}: -<first part of the group>-<version>, or -<version> for core
                suffix = f"-{group.split('.')[0]}-{gvk['version']}" if group else f"-{gvk['version']}"
                (into / f"{gvk['kind'].lower()}{suffix}.json").write_text(json.dumps({**schema, "definitions": defs}))
    return into


def render(cluster: ClusterInfo, *sets: str) -> str:
    args = [tool(cluster, "helm"), "template", "rel", str(CHART), "--namespace", "ops", "--kube-version", "1.36.3"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("values", [[], ["replicaCount=2"], ["watchNamespaces={team-a,team-b}", "dashboard.enabled=true"],
                                    ["api.tls.secretName=api-tls", "api.audiences={necrocode-api,console}"]],
                         ids=["default", "ha", "namespaced", "api-tls"])
def test_rendered_chart_passes_kubeconform_strict(kube: Kubectl, cluster: ClusterInfo, tmp_path: Path,
                                                  values: list[str]) -> None:
    schemas = kubeconform_schemas(kube, tmp_path / "schemas")
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(render(cluster, *values))
    location = str(schemas) + LOCATION
    out = subprocess.run([tool(cluster, "kubeconform"), "-strict", "-summary", "-schema-location", location,
                          str(manifest)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"Invalid: 0, Errors: 0, Skipped: 0", out.stdout), out.stdout


def test_kubeconform_strict_catches_a_wrong_field(kube: Kubectl, cluster: ClusterInfo, tmp_path: Path) -> None:
    schemas = kubeconform_schemas(kube, tmp_path / "schemas")
    bad = tmp_path / "bad.yaml"
    bad.write_text(render(cluster).replace("imagePullPolicy:", "imagePullPolicyy:"))
    location = str(schemas) + LOCATION
    out = subprocess.run([tool(cluster, "kubeconform"), "-strict", "-schema-location", location, str(bad)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "imagePullPolicyy" in out.stdout


def _token_kubeconfig(kube: Kubectl, cluster: ClusterInfo, ns: str, sa: str, path: Path) -> Path:
    token = kube.core.create_namespaced_service_account_token(sa, ns, {"spec": {"expirationSeconds": 3600}}).status.token
    cfg = kube.api.configuration
    ca = Path(cfg.ssl_ca_cert).read_bytes()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cfg.host,
                                                "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}]}))
    return path


def _allowed(kube: Kubectl, user: str, ns: str | None, verb: str, resource: str, group: str = "",
             sub: str | None = None) -> bool:
    attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if ns:
        attrs["namespace"] = ns
    if sub:
        attrs["subresource"] = sub
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}", "system:authenticated"]
    review = kube.auth.create_subject_access_review({"spec": {"user": user, "groups": groups,
                                                              "resourceAttributes": attrs}})
    return bool(review.status.allowed)


def test_install_run_with_least_privilege_and_uninstall(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str,
                                                        namespace: str, tmp_path: Path) -> None:
    if not cluster.local and not os.environ.get("NECROCODE_TEST_CLUSTER_SCOPED"):
        pytest.skip("installs cluster-scoped objects: only on the local control plane "
                    "(or set NECROCODE_TEST_CLUSTER_SCOPED=1)")
    ns, other = solo_namespace, namespace
    helm = tool(cluster, "helm")
    release = f"nc{ns[-6:]}"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run([helm, "install", release, str(CHART), "-n", ns, "--set", f"watchNamespaces={{{ns}}}",
                    "--set", "image.repository=necrocode/necrocode-cancel", "--wait", "--timeout", "90s"],
                   check=True, env=env, capture_output=True, text=True)
    fullname = f"{release}-necrocode-cancel"
    try:
        # with kwok, the operator's pod is scheduled on a fake node and reported Ready
        dep = kube.api.sanitize_for_serialization(
            __import__("kubernetes").client.AppsV1Api(kube.api).read_namespaced_deployment(fullname, ns))
        assert dep["status"].get("readyReplicas") == 1
        pods = kube.pods(ns, "app.kubernetes.io/name=necrocode-cancel")
        assert sorted(p.metadata.labels["app.kubernetes.io/component"] for p in pods) == ["api", "operator"]
        assert all(p.spec.node_name.startswith("kwok-node-") for p in pods)

        user = f"system:serviceaccount:{ns}:{fullname}"
        # least privilege, proven by the API server's own authorizer
        assert _allowed(kube, user, ns, "delete", "pods")
        assert _allowed(kube, user, ns, "patch", "jobcancellations", "necrocode.io", "status")
        assert not _allowed(kube, user, ns, "get", "secrets")
        assert not _allowed(kube, user, ns, "list", "secrets")
        assert not _allowed(kube, user, ns, "create", "pods", sub="exec")
        assert not _allowed(kube, user, None, "impersonate", "users")
        assert not _allowed(kube, user, None, "impersonate", "serviceaccounts")
        assert not _allowed(kube, user, other, "delete", "pods")  # outside its namespaces
        assert not _allowed(kube, user, other, "list", "jobcancellations", "necrocode.io")
        assert not _allowed(kube, user, ns, "create", "deployments", "apps")
        assert not _allowed(kube, user, None, "update", "nodes")

        # the operator, out of cluster, with the chart's identity, does a full job and task cancellation
        kubeconfig = _token_kubeconfig(kube, cluster, ns, fullname, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        op_env = {**os.environ, **operator_env(cluster), "KUBECONFIG": str(kubeconfig),
                  "NECROCODE_KUBECONFIG": str(kubeconfig)}
        op = subprocess.Popen([sys.executable, "-m", "necrocode.main", "--namespace", ns, "--liveness", ""],
                              env=op_env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            kube.create_job(ns, "job")
            kube.create_runner(ns, "job", "a", stop="slow", after=1)
            kube.create_task(ns, "job", "a", "Running", runner="job-a-runner")
            kube.create_task(ns, "job", "b", "Pending", depends_on=["a"])
            kube.create_lease(ns, "slot-a", job="job", task_id="a", holder="job-a-runner")
            kube.create_configmap(ns, "job-scratch", "job", "scratch", task_id="a")
            kube.create_job(ns, "job2")
            kube.create_runner(ns, "job2", "x", stop="never")
            kube.create_task(ns, "job2", "x", "Running", runner="job2-x-runner")
            kube.create_task(ns, "job2", "y", "Pending", depends_on=["x"])
            kube.cancel_task(ns, "tc", "job", "a", gracePeriodSeconds=5)
            kube.cancel_job(ns, "jc", "job2", gracePeriodSeconds=1, escalateAfterSeconds=1)
            tc = kube.wait_phase("taskcancellations", ns, "tc", timeout=60)["status"]
            jc = kube.wait_phase("jobcancellations", ns, "jc", timeout=60)["status"]
        finally:
            op.terminate()
            op.wait(timeout=20)
        text = log.read_text()
        assert tc["phase"] == "Completed", (tc, text[-3000:])
        assert jc["phase"] == "Completed", (jc, text[-3000:])
        tp = tc["progress"]
        assert (tp["tasksCancelled"], tp["leasesReleased"], tp["resourcesDeleted"]) == (2, 1, 1)
        assert (jc["progress"]["runnersForced"], jc["progress"]["tasksCancelled"]) == (1, 2)
        assert "Forbidden" not in text and "403" not in text

        # the setting that adds scratch Secrets grants exactly that
        subprocess.run([helm, "upgrade", release, str(CHART), "-n", ns, "--reuse-values",
                        "--set", "operator.includeSecrets=true"], check=True, env=env, capture_output=True)
        wait_for(lambda: _allowed(kube, user, ns, "delete", "secrets"), what="secrets granted")
        assert not _allowed(kube, user, other, "delete", "secrets")
    finally:
        out = subprocess.run([helm, "uninstall", release, "-n", ns, "--wait", "--timeout", "60s"], env=env,
                             capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from kubernetes.client.rest import ApiException

    for read in (lambda: kube.rbac.read_cluster_role("necrocode-cancel-edit"),  # the users' roles go too
                 lambda: kube.adm.read_validating_admission_policy(f"{fullname}-block-dispatch"),
                 lambda: kube.core.read_namespaced_service_account(fullname, ns)):
        with pytest.raises(ApiException) as err:
            read()
        assert err.value.status == 404
