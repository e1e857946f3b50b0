"""Control-plane faults during a big cancellation (issue 13, Reliability item 9).

Each test cancels a job of N = 200 running tasks (a runner pod, an AgentTask and a held repo
slot Lease each), injects one fault while TerminateRunners is under way (some runners gone,
not all), holds it a few seconds, lifts it, and then demands the same end as without it:
phase Completed, no runner left, every task Cancelled, every Lease released, exact counts.

- the kube-apiserver restarted;
- etcd restarted;
- API Priority and Fairness rejecting the operator's requests with 429 (a FlowSchema that
  matches only the operator's own ServiceAccount, sending it to a priority level with no seats);
- a TCP proxy between the operator and the API server that delays, resets and black-holes
  connections (tests/support/faultproxy.py).

The operator runs as a subprocess (its own process, its own connections, its own JSON log in
tmp_path, quoted in every failure), with the documented retry defaults (PRODUCTION_RETRY).

The restarts (LocalCluster.restart: SIGTERM, SIGKILL after 5 s as a kubelet would, start
again, wait until ready; 6-8 s without an API server) use a dedicated, module-scoped control
plane rather than the session's. A restart takes the API server away from every client of
the cluster, the session's in-process operator and its watches included; after an API server
restart the dispatch-blocking admission policy can refuse runner pods for a while (see
admission_ready), which would fail unrelated later tests; and a component that does not come
back would fail the rest of the session with errors pointing nowhere near here. A second
control plane starts in 6-9 s on 2 cores: cheap for that isolation. APF and the proxy touch
only the operator's own identity or connections, so they run on the session cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.localcluster import LocalCluster
from tests.support.faultproxy import FaultProxy, proxy_kubeconfig
from tests.support.kube import ClusterInfo, Kubectl, sa_kubeconfig, wait_for
from tests.support.operators import alive, evidence, populate, run_operator

N = 200
JOB = "job"
GRACE = 20
"""Each runner's grace; the runners stop well within it (kwok `slow`, 1-8 s after deletion),
so without a fault every runner ends gracefully and the step lasts several seconds."""
ESCALATE = 5


# ----------------------------------------------------------------------------- helpers
def status(kube: Kubectl, ns: str) -> dict[str, Any]:
    return dict(kube.get("jobcancellations", ns, "stop").get("status") or {})


def wait_terminating(kube: Kubectl, ns: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """Until TerminateRunners runs with some runners gone and some not: the fault's moment."""
    def under_way() -> dict[str, Any] | None:
        alive(proc, log)
        st = status(kube, ns)
        steps = {s["name"]: s["state"] for s in st.get("steps", [])}
        done = (st.get("progress") or {}).get("runnersTerminated", 0)
        return st if steps.get("TerminateRunners") == "Running" and 0 < done < N else None

    try:
        return wait_for(under_way, timeout=60, interval=0.1, what="TerminateRunners under way") or {}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{evidence(log)}") from None


def hold(seconds: float, effect: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
         interval: float = 0.1) -> None:
    """Keep a fault for at least `seconds` and until it has visibly hit the operator."""
    started = time.monotonic()

    def hit() -> bool:
        alive(proc, log)
        return effect()

    wait_for(hit, timeout=30, interval=interval, what=what)
    left = seconds - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)  # the fault's duration, not a wait for correctness


def finish_and_check(kube: Kubectl, ns: str, proc: subprocess.Popen[bytes], log: Path,
                     timeout: float = 90) -> dict[str, Any]:
    """The cancellation ends exactly as it would have without the fault."""
    def finished() -> dict[str, Any] | None:
        alive(proc, log)
        st = status(kube, ns)
        return st if st.get("phase") in ("Completed", "PartiallyCompleted", "Failed", "Rejected") else None

    try:
        st = wait_for(finished, timeout=timeout, what="the cancellation to finish") or {}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstatus: {json.dumps(status(kube, ns))[:3000]}\n{evidence(log)}") from None
    why = f"\nstatus: {json.dumps(st)[:3000]}\n{evidence(log)}"
    assert st["phase"] == "Completed", why
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"]) == (N, N), why
    assert (p["tasksCancelled"], p["leasesReleased"]) == (N, N), why
    left = [x.metadata.name for x in kube.pods(ns, "necrocode.io/role=runner")]
    assert left == [], f"runner pods left: {left[:10]}" + why
    tasks = kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", ns, "agenttasks")["items"]
    not_cancelled = [t["metadata"]["name"] for t in tasks if (t.get("status") or {}).get("state") != "Cancelled"]
    assert len(tasks) == N and not_cancelled == [], f"tasks not Cancelled: {not_cancelled[:10]}" + why
    leases = kube.coord.list_namespaced_lease(ns).items
    held = [x.metadata.name for x in leases if x.spec.holder_identity or "necrocode.io/job" in (x.metadata.labels or {})]
    assert len(leases) == N and held == [], f"leases not released: {held[:10]}" + why
    return st


# ----------------------------------------------------------------------------- restarts
@dataclass
class Dedicated:
    lc: LocalCluster
    info: ClusterInfo
    kube: Kubectl


@pytest.fixture(scope="module")
def dedicated(cluster: ClusterInfo) -> Iterator[Dedicated]:
    """A control plane of its own for the restart tests (see the module doc for why)."""
    if not cluster.local or cluster.bins is None:
        pytest.skip("restarting control-plane components needs the local control plane")
    state = Path(tempfile.mkdtemp(prefix="necrocode-faults-cluster-"))
    lc = LocalCluster(dir=state, nodes=1, tie_to_parent=True, bins=cluster.bins)
    started = time.monotonic()
    try:
        kubeconfig = lc.up()
        print(f"\ndedicated control plane up in {time.monotonic() - started:.1f}s ({state})", file=sys.stderr)
        kube = Kubectl(kubeconfig)
        kube.install_crds()
        yield Dedicated(lc, ClusterInfo(kubeconfig=kubeconfig, local=True, bins=cluster.bins, state_dir=state), kube)
    finally:
        lc.down()
        shutil.rmtree(state, ignore_errors=True)


def admission_ready(kube: Kubectl, ns: str) -> bool:
    """Does the API server admit a runner pod (server-side dry run)? After an API server restart
    the dispatch-blocking ValidatingAdmissionPolicy may not resolve its paramKind (a CRD kind)
    yet and, failurePolicy Fail, refuses runner pods (seen once ~10 s after a restart: 422
    "failed to find resource referenced by paramKind"; not in four restarts since)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "labels": {
        "necrocode.io/job": "probe", "necrocode.io/role": "runner"}},
        "spec": {"nodeName": "kwok-node-0", "containers": [{"name": "c", "image": "probe"}]}}
    kube.core.create_namespaced_pod(ns, pod, dry_run="All")
    return True


# etcd first: after an API server restart, runner pods may be refused for a while (admission_ready)
@pytest.mark.parametrize("component", ["etcd", "kube-apiserver"])
def test_component_restarted_during_terminate_runners(dedicated: Dedicated, component: str, tmp_path: Path) -> None:
    kube, ns, log = dedicated.kube, f"solo-{uuid.uuid4().hex[:8]}", tmp_path / "operator.log"
    kube.create_namespace(ns)
    wait_for(lambda: admission_ready(kube, ns), timeout=120, what="runner pods admitted")
    populate(kube, ns, N, JOB, GRACE)
    with run_operator(dedicated.info, ns, log) as op:
        kube.cancel_job(ns, "stop", JOB, gracePeriodSeconds=GRACE, escalateAfterSeconds=ESCALATE)
        before = wait_terminating(kube, ns, op, log)["progress"]["runnersTerminated"]
        started = time.monotonic()
        dedicated.lc.restart(component)  # down, started again, ready: the fault's duration
        print(f"\n{component} restarted in {time.monotonic() - started:.1f}s, "
              f"{before}/{N} runners gone before", file=sys.stderr)
        finish_and_check(kube, ns, op, log)


# ----------------------------------------------------------------------------- APF 429
def rejected(kube: Kubectl, flow_schema: str) -> int:
    """apiserver_flowcontrol_rejected_requests_total for that FlowSchema: the API server's own
    count of the 429s it answered to the identity the FlowSchema matches."""
    method, url, headers, _, _ = kube.api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    resp = kube.api.call_api(method, url, header_params=headers)
    resp.read()
    total = 0.0
    for line in (resp.data or b"").decode().splitlines():
        if line.startswith("apiserver_flowcontrol_rejected_requests_total{") and f'flow_schema="{flow_schema}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def matched_flow_schema(probe: Kubectl, ns: str) -> str:
    """The uid of the FlowSchema the API server matched a request of the probe's identity to
    (every answer carries it in X-Kubernetes-Pf-Flowschema-Uid)."""
    try:
        _, _, headers = probe.core.list_namespaced_config_map_with_http_info(ns, limit=1)
    except ApiException as exc:
        headers = exc.headers or {}
    return str((headers or {}).get("X-Kubernetes-Pf-Flowschema-Uid", ""))


def test_priority_and_fairness_rejects_the_operator_with_429(kube: Kubectl, cluster: ClusterInfo,
                                                             solo_namespace: str, tmp_path: Path) -> None:
    """The operator runs as a ServiceAccount (system:masters would match the built-in `exempt`
    FlowSchema); the fault is a FlowSchema for that ServiceAccount only, to a priority level with
    no seats that rejects. Such a level still admits one request while none of its requests is
    executing (APF's queueset never starves a level entirely), so what the operator meets is
    429 for every request that overlaps another: most of them, at its concurrency of 50."""
    ns, log = solo_namespace, tmp_path / "operator.log"
    sa, name = "necrocode-operator", f"necrocode-fault-{ns}"
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})
    kube.rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})
    kc = sa_kubeconfig(kube, cluster.kubeconfig, tmp_path / "operator.kubeconfig", ns, sa)
    probe = Kubectl(kc)  # the operator's identity, to see how the API server classifies it
    fc = client.FlowcontrolApiserverV1Api(kube.api)
    fc.create_priority_level_configuration({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 0, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}}})
    flow_schema = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
        "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 500,
                 "distinguisherMethod": {"type": "ByUser"},
                 "rules": [{"subjects": [{"kind": "ServiceAccount",
                                          "serviceAccount": {"name": sa, "namespace": ns}}],
                            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                               "clusterScope": True, "namespaces": ["*"]}],
                            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}}
    try:
        # RBAC's informer needs a moment to see the new binding
        wait_for(lambda: matched_flow_schema(probe, ns), timeout=30, what="the operator's identity authorized")
        populate(kube, ns, N, JOB, GRACE)
        with run_operator(cluster, ns, log, NECROCODE_KUBECONFIG=str(kc), KUBECONFIG=str(kc)) as op:
            kube.cancel_job(ns, "stop", JOB, gracePeriodSeconds=GRACE, escalateAfterSeconds=ESCALATE)
            wait_terminating(kube, ns, op, log)
            uid = fc.create_flow_schema(flow_schema).metadata.uid
            try:
                wait_for(lambda: matched_flow_schema(probe, ns) == uid, timeout=15, interval=0.1,
                         what="the fault's FlowSchema matching the operator's identity")
                base = rejected(kube, name)
                hold(4, lambda: rejected(kube, name) - base >= 20, "20 requests of the operator rejected", op, log,
                     interval=0.5)
                count = rejected(kube, name) - base
            finally:
                fc.delete_flow_schema(name)
            wait_for(lambda: matched_flow_schema(probe, ns) not in ("", uid), timeout=15,
                     what="the operator's identity back on the built-in FlowSchemas")
            print(f"\nAPF answered {count} requests of the operator with 429", file=sys.stderr)
            finish_and_check(kube, ns, op, log)
    finally:
        for delete in (fc.delete_flow_schema, fc.delete_priority_level_configuration,
                       kube.rbac.delete_cluster_role_binding):
            try:
                delete(name)
            except ApiException:
                pass
        probe.api.close()


# ----------------------------------------------------------------------------- TCP proxy
def test_proxy_delays_resets_and_drops_connections(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str,
                                                   tmp_path: Path) -> None:
    ns, log = solo_namespace, tmp_path / "operator.log"
    host, port = kube.api.configuration.host.removeprefix("https://").rsplit(":", 1)
    populate(kube, ns, N, JOB, GRACE)
    with FaultProxy(host, int(port)) as proxy:
        kc = proxy_kubeconfig(cluster.kubeconfig, tmp_path / "proxied.kubeconfig", proxy)
        # a black-holed request ends only by the client's timeout; 5 s instead of 30 s keeps
        # the test short without changing what is tested (that the operator recovers at all)
        with run_operator(cluster, ns, log, NECROCODE_KUBECONFIG=str(kc), KUBECONFIG=str(kc),
                      NECROCODE_REQUEST_TIMEOUT_SECONDS="5") as op:
            kube.cancel_job(ns, "stop", JOB, gracePeriodSeconds=GRACE, escalateAfterSeconds=ESCALATE)
            wait_terminating(kube, ns, op, log)
            base = proxy.stats
            proxy.delay(0.3)
            hold(2, lambda: proxy.stats.delayed > base.delayed + 10, "chunks delayed", op, log)
            proxy.reset()
            hold(2, lambda: proxy.stats.resets > base.resets, "connections reset", op, log)
            proxy.drop()
            hold(3, lambda: proxy.stats.dropped > base.dropped, "connections black-holed", op, log)
            proxy.passthrough()
            print(f"\nproxy: {proxy.stats}", file=sys.stderr)
            finish_and_check(kube, ns, op, log)


def test_a_fault_longer_than_one_calls_retries_is_ridden_out(kube: Kubectl, cluster: ClusterInfo,
                                                             solo_namespace: str, tmp_path: Path) -> None:
    """Every connection reset for longer than a call's whole retry budget (3 attempts from 0.2 s:
    about 0.6 s of pauses): the steps that fail on it are run again, with backoff, within the
    cancellation's bound, and the end is the same as without the fault."""
    ns, log = solo_namespace, tmp_path / "operator.log"
    host, port = kube.api.configuration.host.removeprefix("https://").rsplit(":", 1)
    populate(kube, ns, N, JOB, GRACE)
    with FaultProxy(host, int(port)) as proxy:
        kc = proxy_kubeconfig(cluster.kubeconfig, tmp_path / "proxied.kubeconfig", proxy)
        with run_operator(cluster, ns, log, NECROCODE_KUBECONFIG=str(kc), KUBECONFIG=str(kc),
                          NECROCODE_REQUEST_TIMEOUT_SECONDS="5", NECROCODE_RETRY_ATTEMPTS="3",
                          NECROCODE_RETRY_BASE_SECONDS="0.2") as op:
            kube.cancel_job(ns, "stop", JOB, gracePeriodSeconds=GRACE, escalateAfterSeconds=ESCALATE)
            wait_terminating(kube, ns, op, log)
            base = proxy.stats
            proxy.reset()
            hold(6, lambda: proxy.stats.resets > base.resets + 5, "connections reset", op, log)
            proxy.passthrough()
            print(f"\nproxy: {proxy.stats}", file=sys.stderr)
            finish_and_check(kube, ns, op, log)
        assert "running it again" in log.read_text(), "the fault should have outlasted a call's retries"
