"""The real node (hack/realnode.py): containerd + kubelet joined to the local control plane next
to the kwok nodes, running the reference runner (examples/runner) as real processes.

- the node joins with its own certificate and only the ClusterRole system:node; its kubelet API
  refuses unauthenticated requests and authorizes through the API server (webhook);
- a runner pod gets SIGTERM on delete, saves its work to its artifact and exits 0 within the grace;
- a runner that ignores SIGTERM is SIGKILLed when the grace ends (exit 137);
- the necrocode.io/cancel-requested annotation reaches the runner through the downward API;
- a JobCancellation on the real node: the runner saves its work and exits 0, the one ignoring
  SIGTERM is killed at the end of the grace (137), counted as terminated, not forced;
- a runner on a node whose kubelet is stopped is force-deleted after escalateAfterSeconds, keeps
  running meanwhile, and is killed when the kubelet comes back;
- stopping the node leaves the host as it was (checked when the module's node is torn down).

Skipped, with what is missing, where the host cannot run a node (not root, no containerd/runc/CNI
plugins, no cgroups); against $KUBECONFIG it uses a node labelled necrocode.io/node-kind=real.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException
from realnode_fixtures import *  # noqa: F403  (the fixtures: real_node_handle, real_node)
from realnode_fixtures import RealNodeHandle, runner_pod, start_job_runners

from kube_helpers import ClusterInfo, Kubectl, wait_for

pytestmark = pytest.mark.realnode

CANCEL_ANNOTATION = "necrocode.io/cancel-requested"


def _container(kube: Kubectl, ns: str, name: str) -> Any:
    pod = kube.core.read_namespaced_pod(name, ns)
    statuses = pod.status.container_statuses or []
    return statuses[0] if statuses else None


def _running(kube: Kubectl, ns: str, name: str) -> bool:
    c = _container(kube, ns, name)
    return bool(c and c.state.running and c.ready)


def _terminated(kube: Kubectl, ns: str, name: str) -> Any:
    c = _container(kube, ns, name)
    return c.state.terminated if c and c.state.terminated else None


def _release(kube: Kubectl, ns: str, name: str) -> None:
    try:
        kube.core.patch_namespaced_pod(name, ns, {"metadata": {"finalizers": None}})
    except ApiException:
        pass


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    d = tmp_path / "artifacts"
    d.mkdir()
    return d


def start_runner(kube: Kubectl, ns: str, node: str, script: str, artifacts: Path, grace: int) -> tuple[str, float]:
    name = f"runner-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    kube.core.create_namespaced_pod(ns, runner_pod(name, node, script, artifacts, grace))
    wait_for(lambda: _running(kube, ns, name), timeout=60, what=f"runner pod {name} Running on {node}")
    ready = time.monotonic() - t0
    print(f"\n{script}: pod Running and Ready {ready:.1f}s after create")
    wait_for(lambda: (artifacts / "progress").exists(), timeout=10, what="the runner's first work step")
    return name, ready


def test_real_node_joined_with_least_privilege(kube: Kubectl, real_node: str) -> None:
    node = kube.core.read_node(real_node)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.metadata.labels["necrocode.io/node-kind"] == "real"
    assert any(t.key == "necrocode.io/real-node" and t.effect == "NoSchedule" for t in node.spec.taints or [])
    kwok = kube.core.list_node(label_selector="type=kwok").items
    assert kwok, "kwok nodes live next to the real node"

    def can(verb: str, resource: str, group: str = "") -> bool:
        sar = kube.auth.create_subject_access_review({
            "spec": {"user": f"system:node:{real_node}", "groups": ["system:nodes", "system:authenticated"],
                     "resourceAttributes": {"verb": verb, "resource": resource, "group": group}}})
        return bool(sar.status.allowed)

    assert can("update", "nodes/status") and can("get", "pods")
    assert not can("create", "clusterrolebindings", "rbac.authorization.k8s.io")
    assert not can("delete", "namespaces")
    assert not can("list", "agentjobs", "necrocode.io")


def test_kubelet_api_refuses_anonymous_and_authorizes_by_webhook(cluster: ClusterInfo, kube: Kubectl,
                                                                  real_node: str) -> None:
    if not cluster.local:
        pytest.skip("the kubelet of an existing cluster is not ours")
    assert cluster.state_dir is not None
    node = kube.core.read_node(real_node)
    addr = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    pki = cluster.state_dir / "pki"
    anon = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"https://{addr}:{port}/pods", context=anon, timeout=5)
    assert denied.value.code == 401
    admin = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    admin.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"https://{addr}:{port}/pods", context=admin, timeout=5) as r:
        assert json.loads(r.read())["kind"] == "PodList"


def test_runner_saves_its_work_on_sigterm_and_exits_within_grace(kube: Kubectl, solo_namespace: str,
                                                                    real_node: str, artifacts: Path) -> None:
    ns, grace = solo_namespace, 20
    name, _ = start_runner(kube, ns, real_node, "runner.sh", artifacts, grace)
    try:
        # the cancellation signal reaches the process through the downward API before it ends
        kube.core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {CANCEL_ANNOTATION: "by-test"}}})
        t_annotate = time.monotonic()
        wait_for(lambda: (artifacts / "cancel-requested").exists(), timeout=30,
                 what="the annotation visible in the pod's downward API files")
        print(f"annotation seen by the runner {time.monotonic() - t_annotate:.1f}s after the patch")
        assert (artifacts / "cancel-requested").read_text().strip() == "by-test"

        t0 = time.time()
        kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=grace)
        term = wait_for(lambda: _terminated(kube, ns, name), timeout=grace + 15, interval=0.1,
                        what="the runner to exit")
        reported = time.time() - t0
        saved = (artifacts / "result").stat().st_mtime - t0  # when the process wrote its artifact
        print(f"graceful runner saved its work {saved:.1f}s after delete, exit {term.exit_code} reported "
              f"{reported:.1f}s after delete (grace {grace}s)")
        assert term.exit_code == 0, term
        assert saved < grace / 2 and reported < grace, f"saved after {saved:.1f}s: SIGTERM was not handled"
        result = (artifacts / "result").read_text().strip()
        assert "ended=sigterm" in result and "cancel-requested=by-test" in result, result
        assert int(result.split()[0].split("=")[1]) >= 1
        assert term.message == result  # the termination message carries the artifact summary
    finally:
        _release(kube, ns, name)


def test_runner_ignoring_sigterm_is_killed_when_the_grace_ends(kube: Kubectl, solo_namespace: str,
                                                                 real_node: str, artifacts: Path) -> None:
    ns, grace = solo_namespace, 4
    name, _ = start_runner(kube, ns, real_node, "ignore-sigterm.sh", artifacts, grace)
    try:
        t0 = time.time()
        kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=grace)
        term = wait_for(lambda: _terminated(kube, ns, name), timeout=grace + 20, interval=0.1,
                        what="the runner to be killed")
        reported = time.time() - t0
        # it writes `progress` every 0.2 s until it dies: the last write is when SIGKILL came
        killed = (artifacts / "progress").stat().st_mtime - t0
        print(f"SIGTERM-ignoring runner worked until {killed:.1f}s after delete, exit {term.exit_code} "
              f"({term.reason}) reported {reported:.1f}s after delete (grace {grace}s)")
        assert term.exit_code == 137, term
        # the grace runs from when the kubelet starts the kill (its pod worker takes up the delete
        # 0.1-1.5 s after the API call on this machine), so allow that much on top
        # (and its last step can be one step, plus a busy machine's scheduling delay, before the kill)
        assert grace - 1.0 <= killed <= grace + 3.0, f"killed {killed:.1f}s after delete, grace {grace}s"
        assert reported <= grace + 10
        assert not (artifacts / "result").exists()  # nothing saved: it never handled SIGTERM
        assert int((artifacts / "progress").read_text()) >= 1
    finally:
        _release(kube, ns, name)


class ExitWatch:
    """Records each pod's container exit code from a watch (the terminated status is written
    by the kubelet just before the pod object goes away; polling could miss it)."""

    def __init__(self, kube: Kubectl, ns: str, selector: str) -> None:
        import threading

        from kubernetes import watch

        self.exits: dict[str, int] = {}
        self._w = watch.Watch()
        self._t = threading.Thread(target=self._run, args=(kube, ns, selector), daemon=True)
        self._t.start()

    def _run(self, kube: Kubectl, ns: str, selector: str) -> None:
        try:
            for ev in self._w.stream(kube.core.list_namespaced_pod, ns, label_selector=selector,
                                     timeout_seconds=300):
                pod = ev["object"]
                for c in pod.status.container_statuses or []:
                    if c.state.terminated:
                        self.exits[pod.metadata.name] = c.state.terminated.exit_code
        except Exception:  # the stream closed under stop(); a failure shows up as a missing exit code
            if not self._stopped:
                raise

    _stopped = False

    def stop(self) -> None:
        self._stopped = True
        self._w.stop()


@pytest.mark.usefixtures("operator")
def test_jobcancellation_stops_real_runners(kube: Kubectl, namespace: str, real_node: str, tmp_path: Path) -> None:
    """A JobCancellation with grace N on the real node: the reference runner saves its work and
    exits 0 within the grace; the one that ignores SIGTERM is killed at the end of the grace
    (137), counted as terminated, not forced."""
    ns, job, grace = namespace, "job1", 4
    kube.create_job(ns, job)
    pods = start_job_runners(kube, ns, job, real_node, tmp_path)
    for name, art in pods.values():
        wait_for(lambda n=name: _running(kube, ns, n), timeout=60, what=f"{name} Running")
        wait_for(lambda a=art: (a / "progress").exists(), timeout=10, what=f"{name} working")
    watcher = ExitWatch(kube, ns, f"necrocode.io/job={job}")
    try:
        t0 = time.time()
        kube.cancel_job(ns, "stop-job1", job, reason="real node", gracePeriodSeconds=grace, escalateAfterSeconds=10)
        jc = kube.wait_phase("jobcancellations", ns, "stop-job1", timeout=60)
        wait_for(lambda: len(watcher.exits) == 2, timeout=10, what=f"both exit codes (have {watcher.exits})")
    finally:
        watcher.stop()
    st = jc["status"]
    assert st["phase"] == "Completed", st
    assert st["progress"]["runnersTerminated"] == 2 and st["progress"]["runnersForced"] == 0, st["progress"]
    graceful_art, stubborn_art = pods["graceful"][1], pods["stubborn"][1]
    # the cancellation signal reached both processes through the downward API before they ended
    for art in (graceful_art, stubborn_art):
        signal = json.loads((art / "cancel-requested").read_text())
        assert signal["reason"] == "real node" and signal["by"] == "jobcancellation/stop-job1"
    saved = (graceful_art / "result").stat().st_mtime - t0
    killed = (stubborn_art / "progress").stat().st_mtime - t0
    print(f"\ngraceful runner: exit {watcher.exits[pods['graceful'][0]]}, work saved {saved:.1f}s after the "
          f"cancellation; SIGTERM-ignoring runner: exit {watcher.exits[pods['stubborn'][0]]}, killed {killed:.1f}s "
          f"after it (grace {grace}s); {st.get('message')}", file=sys.__stderr__)  # kopf's runner holds stdout
    assert watcher.exits[pods["graceful"][0]] == 0
    assert "ended=sigterm" in (graceful_art / "result").read_text() and saved < grace
    assert watcher.exits[pods["stubborn"][0]] == 137
    assert not (stubborn_art / "result").exists()
    assert grace - 1.0 <= killed <= grace + 3  # SIGKILL when the grace ends (plus the operator's own latency)
    for tid in ("graceful", "stubborn"):
        assert kube.get("agenttasks", ns, f"{job}-{tid}")["status"]["state"] == "Cancelled"


@pytest.mark.usefixtures("operator")
def test_runner_on_a_stopped_kubelet_is_forced_then_killed_when_it_returns(kube: Kubectl, namespace: str,
                                                                          real_node_handle: RealNodeHandle,
                                                                          tmp_path: Path) -> None:
    real_node, node = real_node_handle.name, real_node_handle.node
    if node is None:
        pytest.skip("stops the kubelet: needs the real node this test session started")
    ns, job, grace, escalate = namespace, "job2", 2, 3
    kube.create_job(ns, job)
    art = tmp_path / "lost"
    art.mkdir()
    pod = runner_pod(f"{job}-lost-runner", real_node, "runner.sh", art, grace=30)
    pod["metadata"]["labels"].update({"necrocode.io/job": job, "necrocode.io/task": "lost"})
    pod["metadata"]["finalizers"] = []
    name = pod["metadata"]["name"]
    kube.core.create_namespaced_pod(ns, pod)
    kube.create_task(ns, job, "lost", "Running", runner=name)
    wait_for(lambda: _running(kube, ns, name), timeout=60, what=f"{name} Running")
    wait_for(lambda: (art / "progress").exists(), timeout=10, what=f"{name} working")

    node.stop_kubelet()
    try:
        t0 = time.time()
        kube.cancel_job(ns, "stop-job2", job, reason="node lost", gracePeriodSeconds=grace,
                        escalateAfterSeconds=escalate)
        jc = kube.wait_phase("jobcancellations", ns, "stop-job2", timeout=60)
        finished = time.time() - t0
        st = jc["status"]
        assert st["phase"] == "Completed", st
        assert st["progress"]["runnersForced"] == 1, st["progress"]
        # the operator counts from the pod's deletionTimestamp, which has whole seconds (up to 1 s early)
        assert finished >= grace + escalate - 1.0, f"forced after {finished:.1f}s"
        with pytest.raises(ApiException) as gone:
            kube.core.read_namespaced_pod(name, ns)
        assert gone.value.status == 404
        # the pod object is gone, the process is not: nothing on the node acted on the delete
        before = int((art / "progress").read_text())
        time.sleep(1.0)
        assert int((art / "progress").read_text()) > before, "the runner should still be running"
        assert not (art / "result").exists()
    finally:
        back = node.start_kubelet()
    t1 = time.time()
    # the returning kubelet finds a container whose pod no longer exists and kills it (the pod's
    # orphan cleanup: a 1-2 s grace, and its cgroup cleanup may SIGKILL at once)
    wait_for(lambda: time.time() - (art / "progress").stat().st_mtime > 1.5 and not _node_pod_processes(node),
             timeout=60, what="the orphaned runner's processes gone")
    last = (art / "progress").stat().st_mtime - t1
    how = (art / "result").read_text().strip() if (art / "result").exists() else "no result saved: SIGKILLed"
    print(f"\nlost-node runner: force-deleted {finished:.1f}s after the cancellation (grace {grace}s + "
          f"escalate {escalate}s) and still working meanwhile; kubelet back (Ready in {back:.1f}s), the runner's "
          f"last work step {last:.1f}s after that ({how})", file=sys.__stderr__)
    assert last < 15, f"the orphaned runner kept working {last:.1f}s after the kubelet came back"


def _node_pod_processes(node: Any) -> set[int]:
    return set(node.pod_processes())
