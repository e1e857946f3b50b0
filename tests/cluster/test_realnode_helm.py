"""Helm for real: the chart installed with the image built here (hack/build_image.py, no Docker)
onto the real node (hack/realnode.py), the operator a real pod with its real probes. Against
$KUBECONFIG (kind: `make kind-e2e`) the same, with the image named by $NECROCODE_TEST_IMAGE and
the node labelled necrocode.io/node-kind=real (see tests/support/realnode.py).

In order, on one release:
- `helm install --wait`: the operator (and API) pods reach Ready through their httpGet probes,
  served by the process itself; /metrics is served; the operator runs with the in-cluster
  ServiceAccount token of the chart (its only credential) and the chart's least-privilege RBAC;
- that pod cancels a job whose runners are real processes on the node (one saves its work on
  SIGTERM, one ignores it and is killed at the end of the grace), with no 403 in its log;
- `helm upgrade` that changes the pod template completes with 1 replica (the new pod is Ready
  as a standby next to the leader: maxUnavailable 0) and with 2 (leader + standby, both Ready);
- `helm rollback` completes;
- `kubectl drain` of the node evicts the two replicas one at a time (PodDisruptionBudget
  minAvailable 1; never fewer than one Ready) and completes (replacements go to kwok nodes);
- `helm uninstall` leaves nothing: no pods, Deployments, RBAC objects, admission policy, leader
  Lease, and no finalizer on the cancellations; the namespace then goes away.

Locally the pods reach the API server, which listens on 127.0.0.1 only, through a forwarder on
the node's bridge address (tests.support.realnode.TcpForwarder): `apiServer.host=kubernetes.default.svc`
(a name in the API server's certificate) mapped by `hostAliases` to that address. (`hostNetwork:
true` would reach it too, but makes the container ports host ports: one replica per node, and no
rolling update on a single node.) On an external cluster they use its `kubernetes` Service, unless
$NECROCODE_TEST_HELM_VALUES adds other values. Everything the tests read of a pod goes through the
API server: its probes' and metrics' answers (pod proxy), its log, its token (exec).

Skipped, with what is missing, where the host cannot run the real node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import watch as kwatch
from kubernetes.client.rest import ApiException

from tests.support.access import allowed
from tests.support.kube import ClusterInfo, Kubectl, wait_for
from tests.support.operators import refusals
from tests.support.realnode import *  # noqa: F403  (the fixtures: real_node_handle, operator_image, apiserver_forwarder)
from tests.support.realnode import (
    HELM_VALUES_ENV,
    ExitWatch,
    RealNodeHandle,
    TcpForwarder,
    pod_log,
    start_job_runners,
    tool,
    wait_working,
)

pytestmark = pytest.mark.realnode

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"
OPERATOR = "app.kubernetes.io/component=operator"
HISTORY: dict[str, Any] = {}  # what a test left for the next (the tests run in order, on one release)


def log(msg: str) -> None:
    print(msg, file=sys.__stderr__, flush=True)


class Release:
    def __init__(self, cluster: ClusterInfo, ns: str, name: str, values: list[Path]) -> None:
        self.cluster, self.ns, self.name, self.values = cluster, ns, name, values
        self.fullname = f"{name}-necrocode-cancel"
        self.helm = tool(cluster, "helm")
        self.kubectl = tool(cluster, "kubectl")
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def run(self, *args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], float]:
        t0 = time.monotonic()
        out = subprocess.run([self.helm, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - t0
        assert out.returncode == 0, f"helm {' '.join(args)} failed after {took:.1f}s:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        return out, took

    def upgrade(self, *sets: str) -> float:
        args = ["upgrade", self.name, str(CHART), "-n", self.ns, "--reuse-values", "--wait", "--timeout", "180s"]
        for s in sets:
            args += ["--set", s]
        return self.run(*args)[1]


@pytest.fixture(scope="module")
def release(cluster: ClusterInfo, kube: Kubectl, real_node_handle: RealNodeHandle, operator_image: str,
            apiserver_forwarder: TcpForwarder | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    from hack import realnode

    ns = f"rn-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(ns)
    repo, tag = operator_image.rsplit(":", 1)
    values: dict[str, Any] = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [ns],
        # the chart's lease (15 s; renew deadline 10 s): a takeover here follows a graceful stop,
        # which releases the Lease, so a short one buys nothing, and on a loaded 2-core CI
        # machine a 5 s lease's 3.3 s renew deadline can be missed: the leader exits, which the
        # kubelet counts as a restart (the likely cause of one CI saw, not confirmed)
        "leaderElection": {"enabled": True},
        "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        # the real node first; another node only when it cannot take the pod (cordoned, for the drain)
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "preference": {"matchExpressions": [
                {"key": realnode.LABEL, "operator": "In", "values": ["real"]}]}}]}},
        "operator": {"retryBaseSeconds": 0.2, "stuckTimeoutSeconds": 5},
    }
    if cluster.local:  # no kube-proxy: through the forwarder on the node's bridge (the module's docstring)
        assert apiserver_forwarder is not None
        values["apiServer"] = {"host": "kubernetes.default.svc", "port": str(apiserver_forwarder.port)}
        values["hostAliases"] = [{"ip": realnode.NODE_IP, "hostnames": ["kubernetes.default.svc"]}]
    path = tmp_path_factory.mktemp("helm") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    extra = os.environ.get(HELM_VALUES_ENV)  # external mode: added (and winning), e.g. how to reach the API server
    rel = Release(cluster, ns, f"rn{ns[-6:]}", [path, *([Path(extra)] if extra else [])])
    try:
        yield rel
    finally:
        subprocess.run([rel.kubectl, "uncordon", real_node_handle.name], env=rel.env, capture_output=True)
        subprocess.run([rel.helm, "uninstall", rel.name, "-n", ns, "--wait", "--timeout", "60s"], env=rel.env,
                       capture_output=True)
        kube.delete_namespace(ns)


# ----------------------------------------------------------------------------- helpers
def operator_pods(kube: Kubectl, rel: Release) -> list[Any]:
    pods = kube.pods(rel.ns, f"app.kubernetes.io/instance={rel.name},{OPERATOR}")
    return [p for p in pods if not p.metadata.deletion_timestamp]


def ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def pod_get(kube: Kubectl, pod: Any, port: int, path: str) -> str:
    """GET http://<pod>:<port>/<path> through the API server's pod proxy (which reaches pod IPs
    from the control plane: on kind the pytest machine has no route to them)."""
    resp = kube.core.connect_get_namespaced_pod_proxy_with_path(
        f"{pod.metadata.name}:{port}", pod.metadata.namespace, path.lstrip("/"),
        _preload_content=False, _request_timeout=5)
    return str(resp.data.decode())


def get_json(kube: Kubectl, pod: Any, port: int, path: str) -> Any:
    return json.loads(pod_get(kube, pod, port, path))


def metrics(kube: Kubectl, pod: Any) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = pod_get(kube, pod, 8080, "/metrics")
    return {s.name + json.dumps(s.labels, sort_keys=True) if s.labels else s.name: s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("necrocode_")}


def role(kube: Kubectl, pod: Any) -> str:
    return str(get_json(kube, pod, 8081, "/healthz")["role"])


def deployment(kube: Kubectl, rel: Release) -> Any:
    return client.AppsV1Api(kube.api).read_namespaced_deployment(rel.fullname, rel.ns)


def settled(kube: Kubectl, rel: Release, replicas: int, node: str) -> list[Any]:
    """The Deployment rolled out: `replicas` pods, all of the current template, Ready (through
    the kubelet's probes: they run on the real node), none terminating."""
    dep = deployment(kube, rel)
    st = dep.status
    assert st.observed_generation == dep.metadata.generation
    assert (st.updated_replicas, st.ready_replicas, st.replicas) == (replicas, replicas, replicas), st
    pods = operator_pods(kube, rel)
    assert len(pods) == replicas and all(ready(p) for p in pods), [(p.metadata.name, p.status.phase) for p in pods]
    assert all(p.spec.node_name == node for p in pods), [p.spec.node_name for p in pods]
    restarted = [p for p in pods if any(c.restart_count for c in p.status.container_statuses or [])]
    assert not restarted, "a replica restarted:\n" + "\n".join(why_restarted(kube, p) for p in restarted)
    return pods


def why_restarted(kube: Kubectl, pod: Any) -> str:
    """What the kubelet recorded of a container's last end (reason, exit code, when) and the tail
    of that run's log: a lost Lease (exit 1, "leadership lost"), OOMKilled, a failed probe."""
    out = []
    for c in pod.status.container_statuses or []:
        t = c.last_state.terminated if c.last_state else None
        if t is not None:
            out.append(f"{pod.metadata.name}/{c.name}: restarts {c.restart_count}, last ended {t.reason} "
                       f"(exit {t.exit_code}) {t.started_at} .. {t.finished_at} {t.message or ''}")
        try:
            prev = kube.core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace, container=c.name,
                                                     previous=True, tail_lines=20, _preload_content=False,
                                                     _request_timeout=10).data.decode(errors="replace")
        except ApiException as exc:
            prev = f"(previous log: {exc.status})"
        out.append(prev)
    events = kube.core.list_namespaced_event(pod.metadata.namespace,
                                             field_selector=f"involvedObject.name={pod.metadata.name}")
    out += [f"event {e.reason}: {e.message}" for e in events.items if e.type == "Warning"]
    return "\n".join(out)


class ReadyWatch:
    """Watches the operator pods while something happens: how many are Ready at once (not being
    deleted: what the Deployment and the PodDisruptionBudget count), and each pod's role (from
    its own /healthz) whenever it is Ready.

    The counts come from a watch, not from polling: the API server sends every change of every
    pod in order, so each state the pods passed through is seen, also a short one (the new pod
    Ready next to the old one during a one-replica rollout lasts as long as the Deployment
    controller takes to scale the old ReplicaSet down; a poll every 0.2 s missed it). The roles
    are asked for in a thread of their own, so a slow /healthz never delays the counting."""

    def __init__(self, kube: Kubectl, rel: Release, node: str) -> None:
        self.kube, self.rel, self.node = kube, rel, node
        self.selector = f"app.kubernetes.io/instance={rel.name},{OPERATOR}"
        self.min_ready, self.max_ready = 99, 0
        self.max_ready_any = 0  # terminating pods included
        self.roles: dict[str, set[str]] = {}
        self.nodes: dict[str, str] = {}
        self._pods: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        rv = self._list()  # the state before anything happens, then every change after it
        self._threads = [threading.Thread(target=self._watch, args=(rv,), daemon=True),
                         threading.Thread(target=self._ask_roles, daemon=True)]
        for t in self._threads:
            t.start()

    def _list(self) -> str:
        """The pods as they are now (counted); the resourceVersion to watch from."""
        listed = self.kube.core.list_namespaced_pod(self.rel.ns, label_selector=self.selector)
        with self._lock:
            self._pods = {p.metadata.name: p for p in listed.items}
        self._count()
        return str(listed.metadata.resource_version)

    def _count(self) -> None:
        with self._lock:
            every = [p for p in self._pods.values() if ready(p)]
        pods = [p for p in every if not p.metadata.deletion_timestamp]
        self.min_ready, self.max_ready = min(self.min_ready, len(pods)), max(self.max_ready, len(pods))
        self.max_ready_any = max(self.max_ready_any, len(every))

    def _watch(self, rv: str | None) -> None:
        """Streams of 1 s from the last resourceVersion seen; one more after stop() drains what
        happened before it. A 410 (the version compacted away) lists again."""
        last = False
        while not last:
            last = self._stop.is_set()
            try:
                if rv is None:
                    rv = self._list()
                for ev in kwatch.Watch().stream(self.kube.core.list_namespaced_pod, self.rel.ns,
                                                label_selector=self.selector, resource_version=rv,
                                                allow_watch_bookmarks=True, timeout_seconds=1,
                                                _request_timeout=10):
                    p = ev["object"]
                    rv = p.metadata.resource_version
                    if ev["type"] == "BOOKMARK":
                        continue
                    with self._lock:
                        if ev["type"] == "DELETED":
                            self._pods.pop(p.metadata.name, None)
                        else:
                            self._pods[p.metadata.name] = p
                    self._count()
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
            except Exception:
                time.sleep(0.2)

    def _ask_roles(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pods = [p for p in self._pods.values() if ready(p) and not p.metadata.deletion_timestamp]
            for p in pods:
                self.nodes[p.metadata.name] = p.spec.node_name
                if p.spec.node_name == self.node:  # a real pod (not one of kwok's, whose IP leads nowhere)
                    try:
                        self.roles.setdefault(p.metadata.name, set()).add(role(self.kube, p))
                    except (OSError, ApiException, ValueError):
                        pass
            self._stop.wait(0.2)

    def stop(self) -> ReadyWatch:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self


def pod_token(rel: Release, pod: Any) -> str:
    """The ServiceAccount token the kubelet projected into the pod, as the process reads it."""
    out = subprocess.run([rel.kubectl, "exec", "-n", pod.metadata.namespace, pod.metadata.name, "-c", "operator",
                          "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
                         env=rel.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout, out.stderr
    return out.stdout


def operator_log(kube: Kubectl, pod: Any) -> str:
    """The operator container's log, through the API server."""
    return pod_log(kube, pod.metadata.namespace, pod.metadata.name, "operator")


def diag(kube: Kubectl, rel: Release, lines: int = 15) -> str:
    """The leader Lease and the tail of each operator pod's log, for a failure message."""
    try:
        lease = kube.coord.read_namespaced_lease(f"{rel.fullname}-leader", rel.ns).spec
        out = [f"lease: holder {lease.holder_identity}, renewed {lease.renew_time}, transitions {lease.lease_transitions}"]
    except ApiException as exc:
        out = [f"lease: {exc.status}"]
    for p in operator_pods(kube, rel):
        text = operator_log(kube, p).splitlines()[-lines:]
        out.append(f"--- {p.metadata.name} on {p.spec.node_name}:\n" + "\n".join(text))
    return "\n".join(out)


# ----------------------------------------------------------------------------- the scenarios
def test_install_ready_through_real_probes_serving_metrics(kube: Kubectl, release: Release,
                                                          real_node_handle: RealNodeHandle) -> None:
    rel, node = release, real_node_handle.name
    files = [arg for v in rel.values for arg in ("-f", str(v))]
    _, took = rel.run("install", rel.name, str(CHART), "-n", rel.ns, *files, "--wait", "--timeout", "180s")
    [pod] = settled(kube, rel, 1, node)
    api = kube.pods(rel.ns, f"app.kubernetes.io/instance={rel.name},app.kubernetes.io/component=api")
    assert len(api) == 1 and ready(api[0]) and api[0].spec.node_name == node
    c = pod.spec.containers[0]
    assert c.liveness_probe.http_get.path == "/healthz" and c.readiness_probe.http_get.path == "/healthz"
    # the probes' answers, as the kubelet gets them: the process itself serves them
    wait_for(lambda: role(kube, pod) == "leader", timeout=30, what="the only replica leading")
    health = get_json(kube, pod, 8081, "/healthz")
    assert health == {"status": "ok", "role": "leader"}, health
    m = metrics(kube, pod)
    assert m["necrocode_leader"] == 1.0, m
    lease = kube.coord.read_namespaced_lease(f"{rel.fullname}-leader", rel.ns)
    assert lease.spec.holder_identity.startswith(pod.metadata.name), lease.spec.holder_identity
    # owned by the chart's ServiceAccount: uninstall removes it (garbage collection)
    assert [o.kind for o in lease.metadata.owner_references or []] == ["ServiceAccount"]

    # its only credential is the ServiceAccount token the kubelet projected: no kubeconfig anywhere
    env = {e.name for e in c.env or []}
    assert not env & {"KUBECONFIG", "NECROCODE_KUBECONFIG"}
    review = kube.authn.create_token_review({"spec": {"token": pod_token(rel, pod)}})
    user = f"system:serviceaccount:{rel.ns}:{rel.fullname}"
    assert review.status.authenticated and review.status.user.username == user, review.status
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == [pod.metadata.name]
    # and that identity has the chart's least privilege, nothing more
    assert allowed(kube, user, "delete", "pods", rel.ns)
    assert not allowed(kube, user, "get", "secrets", rel.ns)
    assert not allowed(kube, user, "delete", "pods", "default")
    assert not allowed(kube, user, "create", "clusterrolebindings", group="rbac.authorization.k8s.io")
    log(f"\nhelm install --wait: {took:.1f}s until the operator and API pods were Ready on {node} "
        f"(real httpGet probes); /healthz {health}; necrocode_leader {m['necrocode_leader']}")
    HISTORY["installed"] = pod.metadata.name


def test_the_operator_pod_cancels_a_job_of_real_runners(kube: Kubectl, release: Release,
                                                        real_node_handle: RealNodeHandle) -> None:
    rel, node = release, real_node_handle.name
    if "installed" not in HISTORY:
        pytest.skip("needs the installed release")
    ns, job, grace = rel.ns, "job1", 3
    kube.create_job(ns, job)
    runners = start_job_runners(kube, ns, job, node)
    for name in runners.values():
        wait_working(kube, ns, name)
    watcher = ExitWatch(kube, ns, f"necrocode.io/job={job}")
    t0 = time.monotonic()
    kube.cancel_job(ns, "stop-job1", job, reason="helm e2e", gracePeriodSeconds=grace, escalateAfterSeconds=10)
    try:
        jc = kube.wait_phase("jobcancellations", ns, "stop-job1", timeout=90)
        took = time.monotonic() - t0
        wait_for(lambda: len(watcher.exits) == 2, timeout=10, what=f"both exit codes (have {watcher.exits})")
    except AssertionError as exc:
        logs = "\n".join(operator_log(kube, p)[-4000:] for p in operator_pods(kube, rel))
        raise AssertionError(f"{exc}\nstatus: {kube.get('jobcancellations', ns, 'stop-job1').get('status')}\n"
                             f"operator log:\n{logs}") from None
    finally:
        watcher.stop()
    st = jc["status"]
    assert st["phase"] == "Completed", st
    assert st["progress"]["runnersTerminated"] == 2 and st["progress"]["runnersForced"] == 0, st["progress"]
    # what each runner saved, from its termination message
    assert watcher.code(runners["graceful"]) == 0 and watcher.report(runners["graceful"])["ended"] == "sigterm"
    assert watcher.code(runners["stubborn"]) == 137  # killed at the end of the grace
    assert "ended" not in watcher.report(runners["stubborn"])
    for tid in runners:
        assert kube.get("agenttasks", ns, f"{job}-{tid}")["status"]["state"] == "Cancelled"
    [pod] = operator_pods(kube, rel)
    text = operator_log(kube, pod)
    assert "stop-job1" in text and not refusals(text), (refusals(text), text[-3000:])
    m = metrics(kube, pod)
    writes = {k: v for k, v in m.items() if k.startswith("necrocode_api_requests_total")}
    assert sum(writes.values()) > 0, m
    # kopf's finalizer comes off a finished cancellation (nothing will be stuck at uninstall)
    wait_for(lambda: not kube.get("jobcancellations", ns, "stop-job1")["metadata"].get("finalizers"), timeout=30,
             what="the finalizer of the finished cancellation removed")
    log(f"\nthe operator pod cancelled {job} in {took:.1f}s: {st.get('message')}; API requests {writes}")


def test_upgrade_with_one_replica_completes(kube: Kubectl, release: Release, real_node_handle: RealNodeHandle) -> None:
    rel, node = release, real_node_handle.name
    if "installed" not in HISTORY:
        pytest.skip("needs the installed release")
    [old] = operator_pods(kube, rel)
    watch = ReadyWatch(kube, rel, node)
    try:
        took = rel.upgrade("podAnnotations.necrocode\\.io/rev=2")
    finally:
        watch.stop()
    [new] = settled(kube, rel, 1, node)
    assert new.metadata.name != old.metadata.name and new.metadata.annotations["necrocode.io/rev"] == "2"
    # maxSurge 1, maxUnavailable 0: the new pod was Ready next to the old leader, so as a standby
    # (one replica leads at a time), and it did stand by before it led
    assert watch.max_ready_any == 2 and watch.min_ready >= 1, (watch.min_ready, watch.max_ready_any)
    wait_for(lambda: role(kube, new) == "leader", timeout=45, what="the new pod leading")
    text = operator_log(kube, new)
    assert "standing by" in text, text[-2000:]
    # Ready (through the kubelet's probe) before it led: readiness does not wait for the Lease
    became_ready = next(c.last_transition_time for c in new.status.conditions if c.type == "Ready")
    acquired = datetime.fromisoformat(next(json.loads(line)["ts"] for line in text.splitlines()
                                           if "leadership acquired" in line))
    assert became_ready < acquired, (became_ready, acquired)
    log(f"\nhelm upgrade (1 replica, pod template changed): {took:.1f}s; the new pod Ready at {became_ready} "
        f"as a standby, leader at {acquired}; Ready pods during it {watch.min_ready}..{watch.max_ready_any}; "
        f"roles seen {watch.roles}")


def test_upgrade_with_two_replicas_completes(kube: Kubectl, release: Release, real_node_handle: RealNodeHandle) -> None:
    rel, node = release, real_node_handle.name
    if "installed" not in HISTORY:
        pytest.skip("needs the installed release")
    before = {p.metadata.labels["pod-template-hash"] for p in operator_pods(kube, rel)}
    took_scale = rel.upgrade("replicaCount=2")
    pods = settled(kube, rel, 2, node)
    after = {p.metadata.labels["pod-template-hash"] for p in pods}
    if before != after:
        import difflib

        m = [rel.run("get", "manifest", rel.name, "-n", rel.ns, "--revision", r)[0].stdout.splitlines()
             for r in ("2", "3")]
        log("\n".join(difflib.unified_diff(m[0], m[1], lineterm="")))
    assert before <= after, "scaling changed the pod template"
    # one leads: the old leader may still be stopping (kopf's graceful stop) after the rollout
    wait_for(lambda: sorted(role(kube, p) for p in pods) == ["leader", "standby"], timeout=45,
             what="a leader and a standby")
    # the standby serves /metrics too
    assert sorted(metrics(kube, p)["necrocode_leader"] for p in pods) == [0.0, 1.0]
    pdb = client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(rel.fullname, rel.ns)
    wait_for(lambda: client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(
        rel.fullname, rel.ns).status.disruptions_allowed == 1, timeout=30, what="the PDB allowing one disruption")
    assert pdb.spec.min_available == 1

    watch = ReadyWatch(kube, rel, node)
    try:
        took = rel.upgrade("podAnnotations.necrocode\\.io/rev=3")
    finally:
        watch.stop()
    pods = settled(kube, rel, 2, node)
    assert all(p.metadata.annotations["necrocode.io/rev"] == "3" for p in pods)
    wait_for(lambda: sorted(role(kube, p) for p in pods) == ["leader", "standby"], timeout=45,
             what=f"a leader and a standby\n{diag(kube, rel)}")
    assert watch.min_ready >= 2, watch.min_ready  # maxUnavailable 0
    log(f"\nhelm upgrade to 2 replicas: {took_scale:.1f}s (leader + standby, both Ready); "
        f"helm upgrade with 2 replicas (pod template changed): {took:.1f}s, Ready pods during it "
        f"{watch.min_ready}..{watch.max_ready}")
    HISTORY["two"] = True


def test_rollback_completes(kube: Kubectl, release: Release, real_node_handle: RealNodeHandle) -> None:
    rel, node = release, real_node_handle.name
    if "two" not in HISTORY:
        pytest.skip("needs the release upgraded to 2 replicas")
    _, took = rel.run("rollback", rel.name, "0", "-n", rel.ns, "--wait", "--timeout", "180s")
    pods = settled(kube, rel, 2, node)
    assert all(p.metadata.annotations["necrocode.io/rev"] == "2" for p in pods)
    wait_for(lambda: sorted(role(kube, p) for p in pods) == ["leader", "standby"], timeout=45,
             what=f"a leader and a standby\n{diag(kube, rel)}")
    out, _ = rel.run("history", rel.name, "-n", rel.ns, "-o", "json")
    history = json.loads(out.stdout)
    assert history[-1]["description"].startswith("Rollback to") and history[-1]["status"] == "deployed", history[-1]
    log(f"\nhelm rollback: {took:.1f}s ({history[-1]['description']})")


def test_drain_respects_the_pdb_and_completes(kube: Kubectl, release: Release,
                                              real_node_handle: RealNodeHandle) -> None:
    rel, node = release, real_node_handle.name
    if "two" not in HISTORY:
        pytest.skip("needs the release upgraded to 2 replicas")
    settled(kube, rel, 2, node)
    wait_for(lambda: client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(
        rel.fullname, rel.ns).status.disruptions_allowed == 1, timeout=30, what="the PDB allowing one disruption")
    first, second = operator_pods(kube, rel)
    watch = ReadyWatch(kube, rel, node)

    # the PodDisruptionBudget at work: one replica may go, the other only once a replacement is Ready
    def evict(pod: Any) -> None:
        kube.core.create_namespaced_pod_eviction(pod.metadata.name, rel.ns, {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod.metadata.name, "namespace": rel.ns}})

    t_evict = time.monotonic()
    evict(first)
    with pytest.raises(ApiException) as refused_now:
        evict(second)
    assert refused_now.value.status == 429 and "disruption budget" in str(refused_now.value.body), refused_now.value
    # the replacement starts on the real node as a standby (the leader may be `second`) and
    # becomes Ready through its probe: that unblocks the budget (a standby that is never Ready,
    # as before the fix, blocks every drain for good)
    replacement = wait_for(lambda: [p for p in operator_pods(kube, rel)
                                    if p.metadata.name not in (first.metadata.name, second.metadata.name) and ready(p)],
                           timeout=60, what="the evicted replica's replacement Ready")[0]
    assert replacement.spec.node_name == node
    unblocked = time.monotonic() - t_evict
    wait_for(lambda: client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(
        rel.fullname, rel.ns).status.disruptions_allowed == 1, timeout=30, what="the PDB allowing one disruption again")

    before = {p.metadata.name for p in operator_pods(kube, rel)}
    t0 = time.monotonic()
    try:
        out = subprocess.run([rel.kubectl, "drain", node, f"--pod-selector=app.kubernetes.io/instance={rel.name}",
                              "--delete-emptydir-data", "--ignore-daemonsets", "--timeout=150s"],
                             env=rel.env, capture_output=True, text=True, timeout=200)
        took = time.monotonic() - t0
    finally:
        watch.stop()
        subprocess.run([rel.kubectl, "uncordon", node], env=rel.env, capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr
    after = operator_pods(kube, rel)
    assert not before & {p.metadata.name for p in after}, "every replica on the node was evicted"
    assert all(p.spec.node_name != node for p in after)
    assert watch.min_ready >= 1, "the PodDisruptionBudget let both replicas go at once"
    refused = "disruption budget" in out.stdout + out.stderr
    log(f"\neviction of one replica allowed, of the other refused by the PDB (429) until the replacement "
        f"standby was Ready {unblocked:.1f}s later; kubectl drain {node}: {took:.1f}s, Ready operator pods "
        f"{watch.min_ready}..{watch.max_ready} throughout; an eviction refused and retried during the drain: {refused}; "
        f"replacements on {sorted({p.spec.node_name for p in after})}")


def test_uninstall_leaves_nothing(kube: Kubectl, release: Release) -> None:
    rel = release
    if "installed" not in HISTORY:
        pytest.skip("needs the installed release")
    _, took = rel.run("uninstall", rel.name, "-n", rel.ns, "--wait", "--cascade", "foreground", "--timeout", "120s")
    sel = f"app.kubernetes.io/instance={rel.name}"
    apps = client.AppsV1Api(kube.api)
    wait_for(lambda: not kube.pods(rel.ns, sel), timeout=60, what="the release's pods gone")
    assert not apps.list_namespaced_deployment(rel.ns, label_selector=sel).items
    assert not apps.list_namespaced_replica_set(rel.ns).items
    assert not kube.core.list_namespaced_service(rel.ns, label_selector=sel).items
    assert not [s for s in kube.core.list_namespaced_service_account(rel.ns).items if s.metadata.name != "default"]
    assert not kube.rbac.list_namespaced_role(rel.ns).items and not kube.rbac.list_namespaced_role_binding(rel.ns).items
    assert not kube.rbac.list_cluster_role(label_selector=sel).items
    assert not kube.rbac.list_cluster_role_binding(label_selector=sel).items
    assert not client.PolicyV1Api(kube.api).list_namespaced_pod_disruption_budget(rel.ns).items
    policies = [p.metadata.name for p in kube.adm.list_validating_admission_policy().items]
    assert f"{rel.fullname}-block-dispatch" not in policies
    # the leader Lease (the operator's own) goes with the ServiceAccount that owns it
    wait_for(lambda: not kube.coord.list_namespaced_lease(rel.ns).items, timeout=30,
             what="the leader Lease garbage-collected")
    for plural in ("jobcancellations", "taskcancellations", "agentjobs", "agenttasks"):
        items = kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", rel.ns, plural)["items"]
        stuck = [i["metadata"]["name"] for i in items if i["metadata"].get("finalizers")]
        assert not stuck, f"{plural} with finalizers left: {stuck}"
    # and so the namespace can go: nothing holds it
    kube.core.delete_namespace(rel.ns)

    def gone() -> bool:
        try:
            kube.core.read_namespace(rel.ns)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=60, what=f"namespace {rel.ns} deleted")
    log(f"\nhelm uninstall --wait: {took:.1f}s; no pods, RBAC, policy, Lease or finalizer left; namespace deleted")
