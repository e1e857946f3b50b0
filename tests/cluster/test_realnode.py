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

What the runners saved is read through the API: their termination message (the container's
terminated state) and their log, never their files, so the same tests run against any cluster.

Skipped, with what is missing, where the host cannot run a node (not root, no containerd/runc/CNI
plugins, no cgroups); against $KUBECONFIG (e.g. kind: `make kind-e2e`) it uses a node labelled
necrocode.io/node-kind=real, and the tests marked `localnode` (the kubelet's PKI, stopping the
kubelet: they need the node this session started) skip.
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

from tests.support.kube import ClusterInfo, Kubectl, wait_for
from tests.support.realnode import *  # noqa: F403  (the fixtures: real_node_handle, real_node)
from tests.support.realnode import (
    ExitWatch,
    Moment,
    RealNodeHandle,
    parse_report,
    pod_log,
    runner_pod,
    start_job_runners,
    wait_working,
)

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


def start_runner(kube: Kubectl, ns: str, node: str, script: str, grace: int) -> tuple[str, float]:
    name = f"runner-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    kube.core.create_namespaced_pod(ns, runner_pod(name, node, script, grace))
    wait_for(lambda: _running(kube, ns, name), timeout=60, what=f"runner pod {name} Running on {node}")
    ready = time.monotonic() - t0
    print(f"\n{script}: pod Running and Ready {ready:.1f}s after create")
    wait_working(kube, ns, name, timeout=10)
    return name, ready


def test_real_node_joined_with_least_privilege(cluster: ClusterInfo, kube: Kubectl, real_node: str) -> None:
    node = kube.core.read_node(real_node)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.metadata.labels["necrocode.io/node-kind"] == "real"
    assert any(t.key == "necrocode.io/real-node" and t.effect == "NoSchedule" for t in node.spec.taints or [])
    if cluster.local:
        kwok = kube.core.list_node(label_selector="type=kwok").items
        assert kwok, "kwok nodes live next to the real node"

    def can(verb: str, resource: str, group: str = "", subresource: str = "", name: str = "") -> bool:
        sar = kube.auth.create_subject_access_review({
            "spec": {"user": f"system:node:{real_node}", "groups": ["system:nodes", "system:authenticated"],
                     "resourceAttributes": {"verb": verb, "resource": resource, "group": group,
                                            "subresource": subresource, "name": name}}})
        return bool(sar.status.allowed)

    # what a kubelet needs, allowed both by the ClusterRole system:node (the local node's only
    # binding) and by the Node authorizer (kubeadm's nodes, e.g. kind's, have no RBAC binding)
    assert can("update", "nodes", subresource="status", name=real_node)
    assert can("patch", "pods", subresource="status")
    assert not can("create", "clusterrolebindings", "rbac.authorization.k8s.io")
    assert not can("delete", "namespaces")
    assert not can("list", "agentjobs", "necrocode.io")


@pytest.mark.localnode
def test_kubelet_api_refuses_anonymous_and_authorizes_by_webhook(cluster: ClusterInfo, kube: Kubectl,
                                                                  real_node: str) -> None:
    if not cluster.local:
        pytest.skip("external cluster: its kubelet's certificates and authentication are not this session's")
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
                                                                    real_node: str) -> None:
    ns, grace = solo_namespace, 20
    name, _ = start_runner(kube, ns, real_node, "runner.sh", grace)
    try:
        # the cancellation signal reaches the process through the downward API before it ends
        kube.core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {CANCEL_ANNOTATION: "by-test"}}})
        t_annotate = time.monotonic()
        wait_for(lambda: "cancel requested (by-test)" in pod_log(kube, ns, name), timeout=30,
                 what="the annotation visible in the pod's downward API files (the runner's log)")
        print(f"annotation seen by the runner {time.monotonic() - t_annotate:.1f}s after the patch")

        t0 = Moment.now()
        kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=grace)
        term = wait_for(lambda: _terminated(kube, ns, name), timeout=grace + 15, interval=0.1,
                        what="the runner to exit")
        reported = time.time() - t0.wall
        # its saved work, through the API: the termination message is the artifact's summary
        result = parse_report(term.message or "")
        saved, slack = t0.until(result, term.finished_at)  # when the process wrote its artifact
        print(f"graceful runner saved its work {saved:.1f}s after delete, exit {term.exit_code} reported "
              f"{reported:.1f}s after delete (grace {grace}s)")
        assert term.exit_code == 0, term
        assert result.get("ended") == "sigterm" and result.get("cancel-requested") == "by-test", term.message
        assert saved - slack < grace / 2 and reported < grace, f"saved after {saved:.1f}s: SIGTERM was not handled"
        assert int(result["steps"]) >= 1
    finally:
        _release(kube, ns, name)


def test_runner_ignoring_sigterm_is_killed_when_the_grace_ends(kube: Kubectl, solo_namespace: str,
                                                                 real_node: str) -> None:
    ns, grace = solo_namespace, 4
    name, _ = start_runner(kube, ns, real_node, "ignore-sigterm.sh", grace)
    try:
        t0 = Moment.now()
        kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=grace)
        term = wait_for(lambda: _terminated(kube, ns, name), timeout=grace + 20, interval=0.1,
                        what="the runner to be killed")
        reported = time.time() - t0.wall
        # its termination message is rewritten at each step (every 0.2 s) until it dies: the last
        # one is when SIGKILL came
        last = parse_report(term.message or "")
        killed, slack = t0.until(last, term.finished_at)
        print(f"SIGTERM-ignoring runner worked until {killed:.1f}s after delete, exit {term.exit_code} "
              f"({term.reason}) reported {reported:.1f}s after delete (grace {grace}s)")
        assert term.exit_code == 137, term
        # the grace runs from when the kubelet starts the kill (its pod worker takes up the delete
        # 0.1-1.5 s after the API call on this machine), so allow that much on top
        # (and its last step can be one step, plus a busy machine's scheduling delay, before the kill)
        assert grace - 1.0 <= killed + slack and killed - slack <= grace + 3.0, \
            f"killed {killed:.1f}s after delete, grace {grace}s"
        assert reported <= grace + 10
        assert "ended" not in last, term.message  # nothing saved: it never handled SIGTERM
        assert int(last["steps"]) >= 1
    finally:
        _release(kube, ns, name)


@pytest.mark.usefixtures("operator")
def test_jobcancellation_stops_real_runners(kube: Kubectl, namespace: str, real_node: str) -> None:
    """A JobCancellation with grace N on the real node: the reference runner saves its work and
    exits 0 within the grace; the one that ignores SIGTERM is killed at the end of the grace
    (137), counted as terminated, not forced."""
    ns, job, grace = namespace, "job1", 4
    kube.create_job(ns, job)
    pods = start_job_runners(kube, ns, job, real_node)
    for name in pods.values():
        wait_for(lambda n=name: _running(kube, ns, n), timeout=60, what=f"{name} Running")
        wait_working(kube, ns, name, timeout=10)
    watcher = ExitWatch(kube, ns, f"necrocode.io/job={job}")
    try:
        t0 = Moment.now()
        kube.cancel_job(ns, "stop-job1", job, reason="real node", gracePeriodSeconds=grace, escalateAfterSeconds=10)
        jc = kube.wait_phase("jobcancellations", ns, "stop-job1", timeout=60)
        wait_for(lambda: len(watcher.exits) == 2, timeout=10, what=f"both exit codes (have {watcher.exits})")
    finally:
        watcher.stop()
    st = jc["status"]
    assert st["phase"] == "Completed", st
    assert st["progress"]["runnersTerminated"] == 2 and st["progress"]["runnersForced"] == 0, st["progress"]
    graceful, stubborn = pods["graceful"], pods["stubborn"]
    result, last = watcher.report(graceful), watcher.report(stubborn)
    # both runners opted in (necrocode.io/signal: annotation): each pod carried the signal when its
    # deletion began. Whether the process read it before it ended is the kubelet's timing: it
    # refreshes the downward-API file shortly after the PATCH, mostly before the SIGTERM, but not
    # surely (docs/runners.md: 6 of 110 measured deletes-at-once never got it, more on a busy
    # machine). test_runner_saves_its_work_on_sigterm_and_exits_within_grace waits for the file
    # and so checks that path; here a runner that read it must have read this signal.
    for name in (graceful, stubborn):
        signal = json.loads(watcher.annotations_when_deleted[name][CANCEL_ANNOTATION])
        assert signal["reason"] == "real node" and signal["by"] == "jobcancellation/stop-job1", signal
    for report in (result, last):
        if report["cancel-requested"] != "none":
            seen = json.loads(report["cancel-requested"])
            assert (seen["reason"], seen["by"]) == ("real node", "jobcancellation/stop-job1"), report
    saved, slack_s = t0.until(result, watcher.exits[graceful].finished_at)
    killed, slack_k = t0.until(last, watcher.exits[stubborn].finished_at)
    print(f"\ngraceful runner: exit {watcher.code(graceful)}, work saved {saved:.1f}s after the "
          f"cancellation; SIGTERM-ignoring runner: exit {watcher.code(stubborn)}, killed {killed:.1f}s "
          f"after it (grace {grace}s); {st.get('message')}", file=sys.__stderr__)  # kopf's runner holds stdout
    assert watcher.code(graceful) == 0
    assert result.get("ended") == "sigterm" and saved - slack_s < grace
    assert watcher.code(stubborn) == 137
    assert "ended" not in last
    # SIGKILL when the grace ends (plus the operator's own latency)
    assert grace - 1.0 <= killed + slack_k and killed - slack_k <= grace + 3
    for tid in ("graceful", "stubborn"):
        assert kube.get("agenttasks", ns, f"{job}-{tid}")["status"]["state"] == "Cancelled"


@pytest.mark.localnode
@pytest.mark.usefixtures("operator")
def test_runner_on_a_stopped_kubelet_is_forced_then_killed_when_it_returns(kube: Kubectl, namespace: str,
                                                                          real_node_handle: RealNodeHandle,
                                                                          tmp_path: Path) -> None:
    real_node, node = real_node_handle.name, real_node_handle.node
    if node is None:
        pytest.skip("external cluster: stopping its kubelet, and watching a process whose pod object is gone, "
                    "need the real node this test session started")
    ns, job, grace, escalate = namespace, "job2", 2, 3
    kube.create_job(ns, job)
    art = tmp_path / "lost"  # a host directory: the process is watched after its pod object is gone
    art.mkdir()
    pod = runner_pod(f"{job}-lost-runner", real_node, "runner.sh", grace=30, host_artifacts=art)
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


TALKER = """
i=0; term=""
trap 'term=1; echo "talker: got SIGTERM after line $i, printing on in my grace"' TERM
while [ $i -lt 400 ]; do i=$((i+1)); echo "talker line $i: warming up, a long line to pass the kept tail"; done
echo "talker: working"
while :; do
  i=$((i+1))
  if [ -n "$term" ]; then echo "talker line $i: in my grace"; else echo "talker line $i"; fi
  sleep 0.2
done
"""
"""A runner that prints numbered lines (a burst longer than the kept tail, then five a second),
and on SIGTERM says so and goes on printing until it is killed."""


@pytest.mark.usefixtures("operator")
def test_kept_log_of_a_real_runner_holds_what_it_printed_in_its_grace(cluster: ClusterInfo, kube: Kubectl,
                                                                       namespace: str, real_node: str) -> None:
    """preserveLogs on the real node: the KeepLogs step reads the runner's real log (through the
    API server and the node's kubelet, whose certificate the API server verifies) after the
    runner is told and before it is deleted; the runner ignores SIGTERM and prints on in its
    grace, and the log is read again shortly before the grace ends: the ConfigMap holds the lines
    printed in the grace, which the first reading, made before the delete, cannot have. The
    runner is killed when the grace ends and its pod held (a finalizer, as a slow node cleanup
    does) until the operator forces it; the reading right before that force finds the kubelet has
    removed the dead container with its log (it answers 200 with its error as the body), and
    the log kept in the grace stays."""
    from tests.support.kube import operator_env

    ns, job, grace, escalate = namespace, "talk", 3, 2
    tail = int(operator_env(cluster)["NECROCODE_LOG_TAIL_KIB"]) * 1024
    kube.create_job(ns, job)
    name = f"{job}-t-runner"
    pod = runner_pod(name, real_node, "ignore-sigterm.sh", grace=30)  # its finalizer holds the pod after the kill
    pod["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", TALKER]
    pod["metadata"]["labels"].update({"necrocode.io/job": job, "necrocode.io/task": "t"})
    kube.core.create_namespaced_pod(ns, pod)
    kube.create_task(ns, job, "t", "Running", runner=name)
    try:
        wait_for(lambda: _running(kube, ns, name), timeout=60, what=f"{name} Running")
        wait_for(lambda: "talker: working" in pod_log(kube, ns, name), timeout=20, what="the talker working")
        kube.cancel_job(ns, "stop-talk", job, preserveLogs=True, gracePeriodSeconds=grace,
                        escalateAfterSeconds=escalate)
        term = wait_for(lambda: _terminated(kube, ns, name), timeout=grace + 20, what="the talker killed")
        assert term.exit_code == 137, term  # it never stopped by itself: killed when the grace ended
        # the operator forces it when grace + escalation ran out (its Event comes right after the
        # log is read again); then the test lets the pod go
        wait_for(lambda: any(e.reason == "RunnerForced" for e in kube.events_for(ns, "stop-talk")),
                 timeout=grace + escalate + 30, what="the runner forced")
    finally:
        _release(kube, ns, name)
    st = kube.wait_phase("jobcancellations", ns, "stop-talk", timeout=60)["status"]
    assert st["phase"] == "Completed", st
    assert st["progress"]["logsKept"] == 1 and st["progress"].get("logsFailed", 0) == 0, st["progress"]
    assert st["progress"]["runnersForced"] == 1, st["progress"]
    [entry] = st["logs"]
    cm = kube.core.read_namespaced_config_map(entry["configMap"], ns)
    text = cm.data["log"]
    lines = text.splitlines()
    print(f"\nkept log of the real runner: {entry['bytes']} bytes, {len(lines)} lines, "
          f"{sum('in my grace' in line for line in lines)} printed in its grace, last {lines[-1]!r}",
          file=sys.__stderr__)
    assert "unable to retrieve" not in text, text[-300:]  # the kubelet's error never replaces the log
    assert any("got SIGTERM" in line for line in lines) and lines[-1].endswith("in my grace"), text[-500:]
    # the real log's tail: the last lines it had printed, whole, numbered without a gap
    numbers = [int(line.split()[2].rstrip(":")) for line in lines[1:] if line.startswith("talker line ")]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    assert tail - 100 < entry["bytes"] == len(text.encode()) <= tail and entry["truncated"] is True
    assert cm.metadata.labels["necrocode.io/kept-log"] == "true" and cm.metadata.labels["necrocode.io/task"] == "t"
