"""Synchronous helpers for tests: talk to the real API server with the official client, build
NecroCode objects (jobs, tasks, runner pods, leases, artifacts), and wait for conditions."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from necrocode.kube import Kube, load_credentials
from necrocode.planning import RetryPolicy

REPO = Path(__file__).resolve().parents[2]
G, V = "necrocode.io", "v1alpha1"
# The namespaces the session's operator serves; tests that run their own operator use others.
SHARED_NS_PREFIX = os.environ.get("NECROCODE_TEST_NS_PREFIX", "nc-")
T = TypeVar("T")


@dataclass
class ClusterInfo:
    kubeconfig: Path
    local: bool
    bins: Path | None
    state_dir: Path | None = None


def operator_env(cluster: ClusterInfo, metrics_port: int = 0) -> dict[str, str]:
    """The environment of an operator serving `cluster` (fast retries and stuck timeout for tests)."""
    return {
        "KUBECONFIG": str(cluster.kubeconfig),
        "NECROCODE_KUBECONFIG": str(cluster.kubeconfig),
        "NECROCODE_METRICS_PORT": str(metrics_port),
        "NECROCODE_METRICS_ADDR": "127.0.0.1",
        "NECROCODE_RETRY_ATTEMPTS": "3",
        "NECROCODE_RETRY_BASE_SECONDS": "0.2",
        "NECROCODE_STUCK_TIMEOUT_SECONDS": "4",
        "NECROCODE_STATUS_WRITE_INTERVAL": "0.3",
        "NECROCODE_LOG_FORMAT": "json",
        "NECROCODE_REQUESTER_POLICY": "true",  # install_crds installs deploy/requester-policy.yaml
        "NECROCODE_LOG_TAIL_KIB": "4",  # kept runner logs: a tail much shorter than kwok's generated log
        "NECROCODE_LOG_READ_TIMEOUT_SECONDS": "10",  # the default, stated: the tests' bounds count it
        # no Event budget: a test that asserts a task's or runner's Event must not depend on what the
        # tests before it in this worker spent of one (test_event_budget.py gives its operator one)
        "NECROCODE_EVENT_QPS": "0",
        "PYTHONFAULTHANDLER": "1",  # a crash in native code, or SIGABRT (tests.support.operators.stop), leaves tracebacks
    }


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log (the operator's); other lines are skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def kubectl(cluster: ClusterInfo, *args: str, kubeconfig: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real kubectl (the local control plane's, else the one `make tools` built), as the user
    of `kubeconfig` (default: the cluster's own)."""
    import pytest

    from hack.localcluster import CACHE

    binary = (cluster.bins or CACHE / "bin") / "kubectl"
    if not binary.exists():
        pytest.skip("kubectl not built (make tools)")
    return subprocess.run([str(binary), "--kubeconfig", str(kubeconfig or cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout)


def wait_for(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll fn until it returns something truthy; fail with the last value after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except ApiException as exc:
            last = exc
        if last and not isinstance(last, ApiException):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Kubectl:
    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.api.configuration.connection_pool_maxsize = 32
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.auth = client.AuthorizationV1Api(self.api)
        self.authn = client.AuthenticationV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.adm = client.AdmissionregistrationV1Api(self.api)

    # ------------------------------------------------------------------ setup
    def install_crds(self) -> None:
        for path in sorted((REPO / "crds").glob("*.yaml")):
            self.apply_crd(yaml.safe_load(path.read_text()))
        for policy in ("admission-policy.yaml", "requester-policy.yaml"):
            for doc in yaml.safe_load_all((REPO / "deploy" / policy).read_text()):
                self.apply_admission(doc)
        for path in sorted((REPO / "crds").glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            wait_for(lambda n=name: any(c.type == "Established" and c.status == "True"
                                        for c in (self.ext.read_custom_resource_definition(n).status.conditions or [])),
                     what=f"CRD {name} established")
        wait_for(self._crds_served, what="CRDs served")
        wait_for(self._admission_ready, what="the requester policy resolving the cancellation kinds")

    def _admission_ready(self) -> bool:
        """A dry-run create of each cancellation kind passes admission: the requester policy
        answers 503 until the API server's type information for a new CRD has caught up."""
        for kind, plural, extra in (("JobCancellation", "jobcancellations", {}),
                                    ("TaskCancellation", "taskcancellations", {"taskId": "t"})):
            try:
                self.custom.create_namespaced_custom_object(G, V, "default", plural, {
                    "apiVersion": f"{G}/{V}", "kind": kind, "metadata": {"name": "admission-probe"},
                    "spec": {"jobName": "probe", **extra}}, dry_run="All")
            except ApiException as exc:
                if exc.status == 503:
                    return False
                if exc.status != 409:
                    raise
        return True

    def _crds_served(self) -> bool:
        try:
            self.custom.list_cluster_custom_object(G, V, "jobcancellations", limit=1)
            return True
        except ApiException:
            return False

    def apply_crd(self, doc: dict[str, Any]) -> None:
        name = doc["metadata"]["name"]
        try:
            cur = self.ext.read_custom_resource_definition(name)
            doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
            self.ext.replace_custom_resource_definition(name, doc)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.ext.create_custom_resource_definition(doc)

    def apply_admission(self, doc: dict[str, Any]) -> None:
        name, kind = doc["metadata"]["name"], doc["kind"]
        noun = {"ValidatingAdmissionPolicy": "validating_admission_policy",
                "ValidatingAdmissionPolicyBinding": "validating_admission_policy_binding",
                "MutatingAdmissionPolicy": "mutating_admission_policy",
                "MutatingAdmissionPolicyBinding": "mutating_admission_policy_binding"}[kind]
        read, create, replace = (getattr(self.adm, f"{verb}_{noun}") for verb in ("read", "create", "replace"))
        try:
            cur = read(name)
            doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
            replace(name, doc)
        except ApiException as exc:
            if exc.status != 404:
                raise
            create(doc)

    def create_namespace(self, ns: str) -> None:
        self.core.create_namespace({"metadata": {"name": ns}})
        wait_for(lambda: self.core.read_namespaced_service_account("default", ns), what="default ServiceAccount")

    def delete_namespace(self, ns: str) -> None:
        try:
            self.core.delete_namespace(ns, grace_period_seconds=0)
        except ApiException:
            pass

    # ------------------------------------------------------------------ NecroCode objects
    def create_job(self, ns: str, name: str, phase: str = "Running") -> dict[str, Any]:
        self.custom.create_namespaced_custom_object(G, V, ns, "agentjobs", {
            "apiVersion": f"{G}/{V}", "kind": "AgentJob", "metadata": {"name": name},
            "spec": {"dispatch": {"blocked": False}}})
        return self.patch_status("agentjobs", ns, name, {"phase": phase})

    def create_task(self, ns: str, job: str, task_id: str, state: str = "Pending",
                    depends_on: list[str] | None = None, runner: str | None = None,
                    slot: str | None = None) -> dict[str, Any]:
        body, status = task_body(job, task_id, state, depends_on, runner, slot)
        self.custom.create_namespaced_custom_object(G, V, ns, "agenttasks", body)
        return self.patch_status("agenttasks", ns, body["metadata"]["name"], status)

    def patch_status(self, plural: str, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object_status(G, V, ns, plural, name, {"status": status})

    def create_runner(self, ns: str, job: str, task_id: str, stop: str = "immediate", after: int | None = None,
                      name: str | None = None, node: str = "kwok-node-0", finalizers: list[str] | None = None,
                      grace: int = 30, signal: bool = False) -> dict[str, Any]:
        """A runner pod on a kwok node (runner_pod_body says what each argument does)."""
        pod = runner_pod_body(job, task_id, stop, after, name, node, finalizers, grace, signal)
        return self.api.sanitize_for_serialization(self.core.create_namespaced_pod(ns, pod))

    def create_lease(self, ns: str, name: str, pool: str = "pool-a", job: str | None = None,
                     task_id: str | None = None, holder: str | None = None) -> None:
        labels = {"necrocode.io/repo-pool": pool}
        if job:
            labels["necrocode.io/job"] = job
        if task_id:
            labels["necrocode.io/task"] = task_id
        spec: dict[str, Any] = {"leaseDurationSeconds": 3600}
        if holder:
            spec["holderIdentity"] = holder
        self.coord.create_namespaced_lease(ns, {"metadata": {"name": name, "labels": labels}, "spec": spec})

    def create_configmap(self, ns: str, name: str, job: str, marker: str, task_id: str | None = None) -> None:
        labels = {"necrocode.io/job": job, f"necrocode.io/{marker}": "true"}
        if task_id:
            labels["necrocode.io/task"] = task_id
        self.core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": labels},
                                                    "data": {"k": "v"}})

    def create_pvc(self, ns: str, name: str, job: str, marker: str) -> None:
        self.core.create_namespaced_persistent_volume_claim(ns, {
            "metadata": {"name": name, "labels": {"necrocode.io/job": job, f"necrocode.io/{marker}": "true"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})

    def cancel_job(self, ns: str, name: str, job: str, **spec: Any) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(G, V, ns, "jobcancellations", {
            "apiVersion": f"{G}/{V}", "kind": "JobCancellation", "metadata": {"name": name},
            "spec": {"jobName": job, **spec}})

    def cancel_task(self, ns: str, name: str, job: str, task_id: str, **spec: Any) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(G, V, ns, "taskcancellations", {
            "apiVersion": f"{G}/{V}", "kind": "TaskCancellation", "metadata": {"name": name},
            "spec": {"jobName": job, "taskId": task_id, **spec}})

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(G, V, ns, plural, name)

    def wait_phase(self, plural: str, ns: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
        terminal = {"Completed", "PartiallyCompleted", "Failed", "Rejected"}

        def done() -> dict[str, Any] | None:
            obj = self.get(plural, ns, name)
            return obj if (obj.get("status") or {}).get("phase") in terminal else None

        return wait_for(done, timeout=timeout, what=f"{plural}/{name} to finish")

    def task(self, ns: str, job: str, task_id: str) -> dict[str, Any]:
        return self.get("agenttasks", ns, f"{job}-{task_id}")

    def pods(self, ns: str, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(ns, label_selector=selector).items)

    def events_for(self, ns: str, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(ns).items if e.involved_object.name == name]


# ---------------------------------------------------------------------- reliability helpers
def deny_admission(kube: Kubectl, name: str, namespace: str, rules: list[dict[str, Any]], expression: str,
                   message: str) -> None:
    """A ValidatingAdmissionPolicy and its binding, both called `name`, that refuse (403, reason
    Forbidden, `message`) the requests matching `rules` whose `expression` is false, in `namespace` only."""
    kube.apply_admission({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": rules},
                 "validations": [{"expression": expression, "message": message, "reason": "Forbidden"}]}})
    kube.apply_admission({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}})


def remove_admission(kube: Kubectl, name: str, binding_only: bool = False) -> None:
    """Delete the binding (and, unless binding_only, the policy) called `name`; absent is fine."""
    deletes = [kube.adm.delete_validating_admission_policy_binding]
    if not binding_only:
        deletes.append(kube.adm.delete_validating_admission_policy)
    for delete in deletes:
        try:
            delete(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def absent(read: Callable[[], Any]) -> bool:
    """True when read() answers 404."""
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def task_body(job: str, task_id: str, state: str = "Pending", depends_on: list[str] | None = None,
              runner: str | None = None, slot: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """An AgentTask `{job}-{task_id}` and the status to write after creating it (the status
    subresource ignores a status in the create)."""
    body = {"apiVersion": f"{G}/{V}", "kind": "AgentTask",
            "metadata": {"name": f"{job}-{task_id}", "labels": {"necrocode.io/job": job, "necrocode.io/task": task_id}},
            "spec": {"job": job, "taskId": task_id, "dependsOn": depends_on or []}}
    status: dict[str, Any] = {"state": state}
    if runner:
        status["runner"] = runner
    if slot:
        status["repoSlot"] = slot
    return body, status


def runner_pod_body(job: str, task_id: str, stop: str = "immediate", after: int | None = None,
                    name: str | None = None, node: str = "kwok-node-0", finalizers: list[str] | None = None,
                    grace: int = 30, signal: bool = False) -> dict[str, Any]:
    """A runner pod on a kwok node. stop: immediate | slow (after N s, within grace) | never (lost node).
    `signal`: it opts in to the cancel-requested annotation (label necrocode.io/signal=annotation)."""
    name = name or f"{job}-{task_id}-runner"
    meta: dict[str, Any] = {"name": name, "labels": {
        "necrocode.io/job": job, "necrocode.io/task": task_id, "necrocode.io/role": "runner",
        "necrocode.io/kwok-stop": stop, **({"necrocode.io/signal": "annotation"} if signal else {})}}
    if after is not None:
        meta["annotations"] = {"necrocode.io/kwok-stop-after-seconds": str(after)}
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
        "nodeName": node, "terminationGracePeriodSeconds": grace, "automountServiceAccountToken": False,
        "containers": [{"name": "runner", "image": "necrocode/runner:test"}]}}


def bulk(kubeconfig: Path, fn: Callable[[Kube, Any], Awaitable[object]], items: list[Any], concurrency: int = 64) -> None:
    """`fn(client, item)` over items, `concurrency` at once, with the operator's own client
    (aiohttp, JSON as it comes, no threads): the API server sets the pace of thousands of
    writes either way (~300 pods a second here), and this spends less of the GIL the in-process
    operator shares than the official client's model (de)serialisation on 32 threads. The first
    error is raised."""
    import asyncio

    from necrocode.concurrency import bounded

    async def run() -> None:
        k = api_client(kubeconfig)
        try:
            await bounded(items, lambda item: fn(k, item), concurrency)
        finally:
            await k.close()

    asyncio.run(run())


def sa_kubeconfig(kube: Kubectl, src: Path, dst: Path, ns: str, sa: str) -> Path:
    """A kubeconfig for ServiceAccount `sa` (a TokenRequest token): an identity outside
    system:masters, which the built-in `exempt` FlowSchema would spare from APF."""
    token = kube.core.create_namespaced_service_account_token(
        sa, ns, {"spec": {"expirationSeconds": 3600}}).status.token
    doc = yaml.safe_load(src.read_text())
    doc["users"] = [{"name": sa, "user": {"token": token}}]
    for ctx in doc["contexts"]:
        ctx["context"]["user"] = sa
    dst.write_text(yaml.safe_dump(doc))
    dst.chmod(0o600)
    return dst


def create_unreachable_node(kube: Kubectl, name: str, port: int | None = None) -> int:
    """A Node whose kubelet nobody serves: InternalIP 127.0.0.1 and a kubelet port that was free a
    moment ago (a lost node, as the API server sees it when it reads a pod's log there: the
    connection is refused, on loopback), or `port`, where the test listens itself. No kwok
    annotation, so kwok leaves it alone; a pod bound to it by spec.nodeName stays Pending and
    must be force-deleted. Returns the port."""
    from hack.localcluster import free_port

    port = port or free_port()
    kube.core.create_node({"metadata": {"name": name, "labels": {"necrocode.io/test": "unreachable"}}})
    kube.core.patch_node_status(name, {"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
    return port


def api_client(kubeconfig: Path) -> Kube:
    """The operator's own client, with the test session's short retry policy."""
    return Kube(load_credentials(str(kubeconfig)), timeout=5.0, retry=RetryPolicy(attempts=3, base_seconds=0.2))
