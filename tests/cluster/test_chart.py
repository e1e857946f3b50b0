"""The Helm chart on the real control plane: rendered manifests validated by kubeconform (strict,
with schemas taken from this API server, CRDs included), `helm install` and `helm uninstall`,
and least-privilege RBAC proven by running the operator with the chart's ServiceAccount token
(and the chart's default TTL). The uninstall runs while a cancellation is running, with the
chart's pre-delete hook, the test playing kwok's kubelet for the operator's pod and the hook's;
afterwards the record deletes at once. `make crds-apply` upgrades a CRD Helm left as it was."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.support.access import allowed
from tests.support.kube import ClusterInfo, Kubectl, json_lines, operator_env, wait_for
from tests.support.operators import refusals

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"
LOCATION = "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
GROUP_VERSIONS = ["api/v1", "apis/apps/v1", "apis/batch/v1", "apis/rbac.authorization.k8s.io/v1", "apis/policy/v1",
                  "apis/admissionregistration.k8s.io/v1", "apis/flowcontrol.apiserver.k8s.io/v1",
                  "apis/necrocode.io/v1alpha1"]
FINALIZER = "necrocode.io/operator"
KUBELET = "test.necrocode.io/process"
"""Our finalizer on the kwok pod of the operator: the pod goes only once the test has stopped the
operator process that stands for it (a kubelet removes a pod only after its process exited)."""


def tool(cluster: ClusterInfo, name: str) -> str:
    from hack.localcluster import CACHE

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
                                    ["api.tls.secretName=api-tls", "api.audiences={necrocode-api,console}"],
                                    ["flowControl.enabled=true", "operator.apiBudget.qps=100",
                                     "operator.apiBudget.perCancellation.concurrency=10"]],
                         ids=["default", "ha", "namespaced", "api-tls", "budget-flow-control"])
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
                    "--set", "image.repository=necrocode/necrocode-cancel", "--set", "operator.defaultTTLSecondsAfterFinished=2",
                    "--wait", "--timeout", "90s"],
                   check=True, env=env, capture_output=True, text=True)
    fullname = f"{release}-necrocode-cancel"
    op: subprocess.Popen[bytes] | None = None
    uninstalled = False
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
        assert allowed(kube, user, "delete", "pods", ns)
        assert allowed(kube, user, "patch", "jobcancellations", ns, "necrocode.io", "status")
        assert not allowed(kube, user, "get", "secrets", ns)
        assert not allowed(kube, user, "list", "secrets", ns)
        assert not allowed(kube, user, "create", "pods", ns, subresource="exec")
        assert not allowed(kube, user, "impersonate", "users")
        assert not allowed(kube, user, "impersonate", "serviceaccounts")
        assert not allowed(kube, user, "delete", "pods", other)  # outside its namespaces
        assert not allowed(kube, user, "list", "jobcancellations", other, "necrocode.io")
        assert not allowed(kube, user, "create", "deployments", ns, "apps")
        assert not allowed(kube, user, "update", "nodes")

        # the operator, out of cluster, with the chart's identity and its settings (the default TTL
        # the chart's value sets), does a full job and task cancellation
        kubeconfig = _token_kubeconfig(kube, cluster, ns, fullname, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        chart_env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert chart_env["NECROCODE_DEFAULT_TTL_SECONDS"] == "2"
        op_env = {**os.environ, **operator_env(cluster), "KUBECONFIG": str(kubeconfig),
                  "NECROCODE_KUBECONFIG": str(kubeconfig),
                  "NECROCODE_DEFAULT_TTL_SECONDS": chart_env["NECROCODE_DEFAULT_TTL_SECONDS"]}
        op = subprocess.Popen([sys.executable, "-m", "necrocode.main", "--namespace", ns, "--liveness", ""],
                              env=op_env, stdout=log.open("w"), stderr=subprocess.STDOUT)
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
        # neither says how long to keep it (kubectl made them): the default TTL deletes both
        wait_for(lambda: not _records(kube, ns), timeout=30, what="the finished records deleted by the default TTL")
        text = log.read_text()
        assert tc["phase"] == "Completed", (tc, text[-3000:])
        assert jc["phase"] == "Completed", (jc, text[-3000:])
        tp = tc["progress"]
        assert (tp["tasksCancelled"], tp["leasesReleased"], tp["resourcesDeleted"]) == (2, 1, 1)
        assert (jc["progress"]["runnersForced"], jc["progress"]["tasksCancelled"]) == (1, 2)
        assert not refusals(text), refusals(text)

        def expired() -> list[tuple[str, int, bool]]:  # logged once the delete (and kopf's finalizer) went through
            return sorted((e["cancellation"], e["ttl_seconds"], e["default_ttl"]) for e in json_lines(log)
                          if e["event"] == "cancellation record deleted after its TTL")

        assert wait_for(lambda: len(expired()) >= 2 and expired(), timeout=10, what="both expiries logged") == [
            ("jc", 2, True), ("tc", 2, True)]

        # the setting that adds scratch Secrets grants exactly that
        subprocess.run([helm, "upgrade", release, str(CHART), "-n", ns, "--reuse-values",
                        "--set", "operator.includeSecrets=true"], check=True, env=env, capture_output=True)
        wait_for(lambda: allowed(kube, user, "delete", "secrets", ns), what="secrets granted")
        assert not allowed(kube, user, "delete", "secrets", other)

        # uninstall while a cancellation runs (its runner is on a lost node and has 10 minutes of
        # grace): kopf's finalizer is on it, and no operator will be left to take it off
        kube.create_job(ns, "job3")
        kube.create_runner(ns, "job3", "z", stop="never")
        kube.create_task(ns, "job3", "z", "Running", runner="job3-z-runner")
        kube.cancel_job(ns, "jc3", "job3", gracePeriodSeconds=600, escalateAfterSeconds=600)
        wait_for(lambda: _step(kube, ns, "jc3", "TerminateRunners") == "Running" and
                 FINALIZER in kube.get("jobcancellations", ns, "jc3")["metadata"].get("finalizers", []),
                 timeout=30, what="jc3 terminating its runner, with kopf's finalizer")
        hook = _uninstall_with_the_hook(kube, cluster, helm, env, release, ns, op, tmp_path)
        uninstalled = True
        assert op.poll() == 0, "the operator did not stop cleanly on SIGTERM"
    finally:
        if op is not None and op.poll() is None:
            op.terminate()
            op.wait(timeout=20)
        if not uninstalled:
            out = subprocess.run([helm, "uninstall", release, "-n", ns, "--no-hooks", "--wait", "--timeout", "60s"],
                                 env=env, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
    from kubernetes.client.rest import ApiException

    for read in (lambda: kube.rbac.read_cluster_role("necrocode-cancel-edit"),  # the users' roles go too
                 lambda: kube.adm.read_validating_admission_policy(f"{fullname}-block-dispatch"),
                 lambda: kube.core.read_namespaced_service_account(fullname, ns),
                 # the hook's Job and its Role went with it (it succeeded)
                 lambda: kube.rbac.read_namespaced_role(f"{fullname}-pre-delete", ns),
                 lambda: __import__("kubernetes").client.BatchV1Api(kube.api).read_namespaced_job(
                     f"{fullname}-pre-delete", ns)):
        with pytest.raises(ApiException) as err:
            read()
        assert err.value.status == 404
    # the hook stopped the operator first, then freed the record: it is still there (Helm never
    # deletes the CRDs' objects) and still Running, without the finalizer, and it deletes at once
    assert [e["event"] for e in hook if e["event"].startswith("operator")] == [
        "operator Deployment scaled to 0; waiting for its pods to go", "operator finalizers released"]
    assert hook[-1]["released"] == 1 and hook[-1]["failed"] == 0
    jc3 = kube.get("jobcancellations", ns, "jc3")
    assert jc3["status"]["phase"] == "Running" and FINALIZER not in jc3["metadata"].get("finalizers", [])
    kube.custom.delete_namespaced_custom_object("necrocode.io", "v1alpha1", ns, "jobcancellations", "jc3")
    wait_for(lambda: not _records(kube, ns), timeout=10, what="jc3 deleted (nothing holds it)")


def _records(kube: Kubectl, ns: str) -> list[str]:
    return [o["metadata"]["name"] for p in ("jobcancellations", "taskcancellations")
            for o in kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", ns, p)["items"]]


def _step(kube: Kubectl, ns: str, name: str, step: str) -> str | None:
    steps = (kube.get("jobcancellations", ns, name).get("status") or {}).get("steps") or []
    return next((s["state"] for s in steps if s["name"] == step), None)


def _uninstall_with_the_hook(kube: Kubectl, cluster: ClusterInfo, helm: str, env: dict[str, str], release: str,
                             ns: str, op: subprocess.Popen[bytes], tmp_path: Path) -> list[dict[str, Any]]:
    """`helm uninstall` with its pre-delete hook, the test playing the kubelet of kwok's fake nodes
    for two pods: the operator's (its process is `op`: stopped with SIGTERM once the pod is
    deleted, the pod removed only after it exited) and the hook's (its container run here, from
    the Job's own args and env, with its ServiceAccount's token; the pod then marked Succeeded).
    Returns the hook's log lines."""
    fullname = f"{release}-necrocode-cancel"
    [pod] = kube.pods(ns, f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator")
    kube.core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"finalizers": [KUBELET]}})
    uninstall = subprocess.Popen([helm, "uninstall", release, "-n", ns, "--wait", "--timeout", "90s"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hook: subprocess.Popen[bytes] | None = None
    try:
        hook_sel = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=pre-delete"
        [hook_pod] = wait_for(lambda: kube.pods(ns, hook_sel), timeout=30, what="the pre-delete hook's pod")
        spec = hook_pod.spec
        assert spec.service_account_name == fullname
        [c] = spec.containers
        kubeconfig = _token_kubeconfig(kube, cluster, ns, spec.service_account_name, tmp_path / "hook.kubeconfig")
        hook_env = {**os.environ, **{e.name: e.value for e in c.env or [] if e.value is not None},
                    "KUBECONFIG": str(kubeconfig), "NECROCODE_KUBECONFIG": str(kubeconfig)}
        hook_log = tmp_path / "hook.log"
        hook = subprocess.Popen([sys.executable, "-m", "necrocode.main", *(c.args or [])], env=hook_env,
                                stdout=hook_log.open("w"), stderr=subprocess.STDOUT)

        def step() -> int | None:
            # the operator's kubelet: its pod deleted (the hook scaled the Deployment to 0) -> SIGTERM,
            # and the pod goes once the process has exited
            try:
                current = kube.core.read_namespaced_pod(pod.metadata.name, ns)
            except ApiException:
                current = None
            if current is not None and current.metadata.deletion_timestamp and KUBELET in (
                    current.metadata.finalizers or []):
                op.terminate()
                op.wait(timeout=30)
                kube.core.patch_namespaced_pod(pod.metadata.name, ns, [{"op": "remove", "path": "/metadata/finalizers"}])
            assert hook is not None
            code = hook.poll()
            return None if code is None else code + 1  # truthy when the hook has exited

        code = wait_for(step, timeout=90, interval=0.2, what="the pre-delete hook to finish") - 1
        lines = json_lines(hook_log)
        assert code == 0, hook_log.read_text()[-3000:]
        assert op.poll() is not None, "the hook finished while the operator still ran"
        # the hook pod's kubelet: its container exited 0
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        kube.core.patch_namespaced_pod_status(hook_pod.metadata.name, ns, {"status": {
            "phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
            "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                            "startedAt": now, "finishedAt": now}}}]}})
        out, _ = uninstall.communicate(timeout=90)
    finally:
        for proc in (uninstall, hook):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ApiException):  # failed half-way: never leave a pod nothing will let go
            if KUBELET in (kube.core.read_namespaced_pod(pod.metadata.name, ns).metadata.finalizers or []):
                kube.core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"finalizers": None}})
    assert uninstall.returncode == 0, out
    return lines


def test_make_crds_apply_upgrades_the_crds_that_helm_leaves_alone(kube: Kubectl, cluster: ClusterInfo) -> None:
    """`helm upgrade` never touches crds/; `make crds-apply` (server-side apply, forcing the fields
    another manager created) brings an older CRD in the cluster up to the files."""
    if not cluster.local and not os.environ.get("NECROCODE_TEST_CLUSTER_SCOPED"):
        pytest.skip("changes a cluster-scoped CRD: only on the local control plane (or NECROCODE_TEST_CLUSTER_SCOPED=1)")
    name = "jobcancellations.necrocode.io"
    path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/reason/description"
    want = yaml.safe_load((REPO / "crds" / "necrocode.io_jobcancellations.yaml").read_text())[
        "spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["reason"]["description"]

    def description() -> str:
        crd = kube.api.sanitize_for_serialization(kube.ext.read_custom_resource_definition(name))
        return str(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                   ["reason"].get("description"))

    # an older chart's CRD (only a description differs: harmless for the tests running beside this one)
    kube.ext.patch_custom_resource_definition(name, [{"op": "replace", "path": path, "value": "an older description"}])
    assert description() == "an older description"
    out = subprocess.run(["make", "-s", "crds-apply", f"KUBECTL={tool(cluster, 'kubectl')}"], cwd=REPO,
                         env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "customresourcedefinition.apiextensions.k8s.io/jobcancellations.necrocode.io serverside-applied" in out.stdout
    assert description() == want
