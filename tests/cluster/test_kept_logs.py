"""Kept runner logs, wired into cancellations (issue 18, item 3: spec.preserveLogs), on the real
control plane: kwok serves each runner's log on loopback as a kubelet would (hack/localcluster.py),
the session operator's KeepLogs step reads its end through pods/log after the runners are told
and before any is deleted, into one labelled artifact ConfigMap per runner, named in status. A
runner whose log cannot be read (a lost node) is reported and not waited for; the cancellation
still ends. The operator's default (NECROCODE_PRESERVE_LOGS) is decided in the step table
(tests/unit/test_keep_logs_rules.py); the session operator runs with it off."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hack.localcluster import runner_log_text
from necrocode.naming import kept_log_name
from tests.support.kube import ClusterInfo, Kubectl, absent, create_unreachable_node, operator_env, wait_for

pytestmark = pytest.mark.usefixtures("operator")
G, V = "necrocode.io", "v1alpha1"


@pytest.fixture(autouse=True)
def kwok_serves_logs(cluster: ClusterInfo) -> None:
    if not cluster.local:
        pytest.skip("needs the local control plane's kwok, which serves the runners' logs")


@pytest.fixture
def tail(cluster: ClusterInfo) -> int:
    """The session operator's NECROCODE_LOG_TAIL_KIB, in bytes."""
    return int(operator_env(cluster)["NECROCODE_LOG_TAIL_KIB"]) * 1024


def read_timeout(cluster: ClusterInfo) -> float:
    """The session operator's NECROCODE_LOG_READ_TIMEOUT_SECONDS."""
    return float(operator_env(cluster)["NECROCODE_LOG_READ_TIMEOUT_SECONDS"])


@pytest.fixture
def silent_node(kube: Kubectl) -> Iterator[str]:
    """A Node whose kubelet port accepts connections and then says nothing (a hung node): a read
    of a log there waits until the operator's read timeout."""
    name = f"silent-{uuid.uuid4().hex[:8]}"
    port = create_unreachable_node(kube, name)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def hold() -> None:
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield name
    done.set()
    thread.join()
    for conn in held:
        conn.close()
    srv.close()
    kube.core.delete_node(name)


def running(kube: Kubectl, ns: str, job: str, tid: str, node: str = "kwok-node-0", stop: str = "immediate") -> str:
    pod = f"{job}-{tid}-runner"
    kube.create_runner(ns, job, tid, name=pod, node=node, stop=stop)
    kube.create_task(ns, job, tid, "Running", runner=pod)
    if node.startswith("kwok"):
        wait_for(lambda: kube.core.read_namespaced_pod(pod, ns).status.phase == "Running", what=f"{pod} Running")
    return pod


def last_bytes(text: str, n: int) -> str:
    """The end of `text` no longer than n bytes in UTF-8, whole characters only."""
    return text.encode()[-n:].decode("utf-8", errors="ignore")


def kept_logs(kube: Kubectl, ns: str) -> dict[str, Any]:
    items = kube.core.list_namespaced_config_map(ns, label_selector="necrocode.io/kept-log=true").items
    return {c.metadata.annotations["necrocode.io/log-of"]: c for c in items}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == type_)


def test_each_runner_log_tail_is_kept_before_the_runners_go(kube: Kubectl, namespace: str, tail: int) -> None:
    """Even with preserveArtifacts: false, which deletes the job's other artifacts."""
    ns = namespace
    job_uid = kube.create_job(ns, "kl")["metadata"]["uid"]
    pods = [running(kube, ns, "kl", "a"), running(kube, ns, "kl", "b")]
    kube.create_configmap(ns, "kl-report", "kl", "artifact", task_id="a")
    kube.cancel_job(ns, "stop-kl", "kl", preserveLogs=True, preserveArtifacts=False)
    st = kube.wait_phase("jobcancellations", ns, "stop-kl")["status"]
    assert st["phase"] == "Completed", st

    steps = {s["name"]: s for s in st["steps"]}
    names = [s["name"] for s in st["steps"]]
    assert names[names.index("KeepLogs") - 1:names.index("KeepLogs") + 2] == [
        "SignalRunners", "KeepLogs", "TerminateRunners"]
    assert steps["KeepLogs"]["state"] == "Succeeded" and "2 runner log(s) kept" in steps["KeepLogs"]["message"]
    assert st["progress"]["logsKept"] == 2 and st["progress"].get("logsFailed", 0) == 0
    assert condition(st, "LogsKept")["status"] == "True"

    full = runner_log_text()
    assert len(full.encode()) > tail  # the log is longer than what is kept
    cms = kept_logs(kube, ns)
    assert sorted(cms) == pods
    by_pod = {k["pod"]: k for k in st["logs"]}
    for pod, task in zip(pods, ("a", "b"), strict=True):
        cm = cms[pod]
        assert cm.metadata.name == kept_log_name(pod, job_uid) == by_pod[pod]["configMap"]
        assert cm.data["log"] == last_bytes(full, tail)  # exactly the log's last N KiB
        assert cm.data["log"].endswith("the end of the log\n")
        assert by_pod[pod]["task"] == task and by_pod[pod]["truncated"] is True and not by_pod[pod].get("error")
        assert by_pod[pod]["bytes"] == len(cm.data["log"].encode())
        assert cm.metadata.labels == {"necrocode.io/artifact": "true", "necrocode.io/kept-log": "true",
                                      "necrocode.io/job": "kl", "necrocode.io/task": task,
                                      "necrocode.io/job-uid": job_uid}
        # an artifact of the job instance: kept as long as the job, gone with it
        [owner] = cm.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("AgentJob", "kl", job_uid)
    # the runners went after their logs were kept; the job's other artifact was deleted as asked
    wait_for(lambda: not kube.pods(ns, "necrocode.io/job=kl"), what="runners gone")
    assert absent(lambda: kube.core.read_namespaced_config_map("kl-report", ns))
    assert "configmap/kl-report" in st["cleanup"]["deleted"]
    assert not any(d.startswith("configmap/" + kept_log_name(pods[0], job_uid)) for d in st["cleanup"]["deleted"])


def test_a_task_cancellation_keeps_the_logs_of_the_runners_it_stops_only(kube: Kubectl, namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "kt")
    running(kube, ns, "kt", "a")
    running(kube, ns, "kt", "b")
    kube.cancel_task(ns, "stop-kt-a", "kt", "a", preserveLogs=True)
    st = kube.wait_phase("taskcancellations", ns, "stop-kt-a")["status"]
    assert st["phase"] == "Completed", st
    assert [k["pod"] for k in st["logs"]] == ["kt-a-runner"] and st["progress"]["logsKept"] == 1
    assert list(kept_logs(kube, ns)) == ["kt-a-runner"]
    assert kube.core.read_namespaced_pod("kt-b-runner", ns).metadata.deletion_timestamp is None


def test_a_lost_node_runner_log_is_reported_and_the_cancellation_still_ends(kube: Kubectl, namespace: str,
                                                                           cluster: ClusterInfo,
                                                                           unreachable_node: str) -> None:
    ns = namespace
    kube.create_job(ns, "kn")
    running(kube, ns, "kn", "a")
    lost = running(kube, ns, "kn", "b", node=unreachable_node, stop="never")  # no kubelet answers for it
    started = time.monotonic()
    kube.cancel_job(ns, "stop-kn", "kn", preserveLogs=True, gracePeriodSeconds=1, escalateAfterSeconds=1)
    st = kube.wait_phase("jobcancellations", ns, "stop-kn", timeout=90)["status"]
    took = time.monotonic() - started
    # a lost log is visible, but the cancellation did what it is for: the runners are gone
    assert st["phase"] == "Completed", st
    assert st["progress"]["logsKept"] == 1 and st["progress"]["logsFailed"] == 1
    first = st["logs"][0]  # those not kept are listed first
    assert first["pod"] == lost and first["task"] == "b" and first["error"] and not first.get("configMap"), first
    assert list(kept_logs(kube, ns)) == ["kn-a-runner"]
    cond = condition(st, "LogsKept")
    assert (cond["status"], cond["reason"]) == ("False", "LogsNotKept") and lost in cond["message"]
    events = [e for e in kube.events_for(ns, "stop-kn") if e.reason == "LogNotKept"]
    assert [e.type for e in events] == ["Warning"] and lost in events[0].message
    assert {o["pod"]: o["outcome"] for o in st["runnerOutcomes"]}[lost] == "Forced"
    # bounded: grace, escalation, three readings each within the read timeout, slack for a busy machine
    assert took < 1 + 1 + 3 * read_timeout(cluster) + 30, took


def test_an_escalation_to_force_does_not_wait_for_a_log(kube: Kubectl, namespace: str, cluster: ClusterInfo,
                                                      silent_node: str) -> None:
    """The runners' logs are being read (one on a hung node: its read waits out the timeout);
    the user sets spec.force: the runners are forced at once, and the log not read by then is
    reported as not kept."""
    ns = namespace
    kube.create_job(ns, "ke")
    hung = running(kube, ns, "ke", "h", node=silent_node, stop="never")
    kube.cancel_job(ns, "stop-ke", "ke", preserveLogs=True, gracePeriodSeconds=60)

    def keeping() -> bool:
        steps = {s["name"]: s["state"] for s in (kube.get("jobcancellations", ns, "stop-ke").get("status") or {})
                 .get("steps") or []}
        return steps.get("KeepLogs") == "Running"

    wait_for(keeping, timeout=read_timeout(cluster) / 2, interval=0.1, what="the logs being read")
    t0 = time.monotonic()
    kube.custom.patch_namespaced_custom_object(G, V, ns, "jobcancellations", "stop-ke", {"spec": {"force": True}})
    st = kube.wait_phase("jobcancellations", ns, "stop-ke")["status"]
    took = time.monotonic() - t0
    assert st["phase"] == "Completed", st
    [entry] = st["logs"]
    assert entry["pod"] == hung and "escalated to force" in entry["error"], entry
    assert st["progress"]["logsFailed"] == 1 and st["progress"]["runnersForced"] == 1, st["progress"]
    assert took < read_timeout(cluster), f"the escalation waited {took:.1f}s for the log"
    assert absent(lambda: kube.core.read_namespaced_pod(hung, ns))


def test_a_dry_run_lists_the_logs_it_would_keep_and_never_a_kept_log_as_deletable(kube: Kubectl,
                                                                                  namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "kd")
    pods = [running(kube, ns, "kd", "a"), running(kube, ns, "kd", "b")]
    # a log kept by an earlier cancellation of this job, and an ordinary artifact
    kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "kd-a-runner-log-earlier", "labels": {
        "necrocode.io/job": "kd", "necrocode.io/artifact": "true", "necrocode.io/kept-log": "true"},
        "annotations": {"necrocode.io/log-of": "kd-a-runner"}},
        "data": {"log": "earlier\n"}})
    kube.create_configmap(ns, "kd-report", "kd", "artifact")
    kube.cancel_job(ns, "plan-kd", "kd", preserveLogs=True, preserveArtifacts=False, dryRun=True)
    st = kube.wait_phase("jobcancellations", ns, "plan-kd")["status"]
    assert st["phase"] == "Completed", st
    assert st["plan"]["logs"] == pods
    assert "configmap/kd-report" in st["plan"]["scratchResources"]  # would be deleted
    assert "configmap/kd-a-runner-log-earlier" in st["plan"]["artifacts"]  # would be kept
    assert "configmap/kd-a-runner-log-earlier" not in st["plan"]["scratchResources"]
    assert "keep the log of 2 runner(s)" in st["message"]
    assert not st.get("logs") and list(kept_logs(kube, ns)) == ["kd-a-runner"]  # nothing read, nothing written

    # the session operator's default (NECROCODE_PRESERVE_LOGS) is off: no step, no plan for logs
    kube.cancel_job(ns, "plan-kd-default", "kd", dryRun=True)
    st = kube.wait_phase("jobcancellations", ns, "plan-kd-default")["status"]
    assert "KeepLogs" not in [s["name"] for s in st["steps"]] and not st["plan"].get("logs")
