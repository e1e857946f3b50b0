"""Kept runner logs (issue 18, preserveLogs) on the real control plane: kwok serves each runner's
log as a kubelet would, on loopback (hack/localcluster.py: node InternalIP 127.0.0.1, kubelet port
= kwok's server, TLS verified against the local CA), and necrocode.logkeeper reads its end through
the pods/log subresource into one artifact ConfigMap per runner. A lost node's runner and a pod
that is gone are reported, not waited for; no cleanup deletes a kept log."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from hack.localcluster import runner_log_text
from necrocode.cleaner import ResourceCleaner
from necrocode.kube import Kube
from necrocode.logkeeper import keep_logs
from necrocode.logs import Bound
from necrocode.naming import kept_log_name
from tests.support.kube import ClusterInfo, Kubectl, kubectl, wait_for

JOB_UID = "0c0ffee0-1111-2222-3333-444455556666"


@pytest.fixture(autouse=True)
def kwok_serves_logs(cluster: ClusterInfo) -> None:
    """Runner logs are served by the local control plane's kwok (hack/localcluster.py's
    ClusterLogs); another cluster ($KUBECONFIG) need not serve any."""
    if not cluster.local:
        pytest.skip("needs the local control plane's kwok, which serves the runners' logs")


def running_runner(kube: Kubectl, ns: str, job: str, task: str, node: str = "kwok-node-0") -> dict[str, Any]:
    kube.create_runner(ns, job, task, node=node)
    name = f"{job}-{task}-runner"
    wait_for(lambda: kube.core.read_namespaced_pod(name, ns).status.phase == "Running", what=f"{name} Running")
    return kube.api.sanitize_for_serialization(kube.core.read_namespaced_pod(name, ns))


def served_log(kube: Kubectl, ns: str, pod: str) -> str:
    """The whole log as any client of the API server reads it."""
    return str(kube.core.read_namespaced_pod_log(pod, ns, _preload_content=False).data.decode())


def last_bytes(text: str, n: int) -> str:
    """The end of `text` no longer than n bytes in UTF-8, whole characters only."""
    return text.encode()[-n:].decode("utf-8", errors="ignore")


def kept_logs(kube: Kubectl, ns: str) -> list[Any]:
    return list(kube.core.list_namespaced_config_map(ns, label_selector="necrocode.io/kept-log=true").items)


def test_kwok_nodes_are_reached_on_loopback_only(kube: Kubectl, cluster: ClusterInfo) -> None:
    """The API server reaches kwok's kubelet server at 127.0.0.1 and kwok's port: never at a
    made-up node address (no traffic leaves loopback)."""
    assert cluster.state_dir is not None
    port = json.loads((cluster.state_dir / "ports.json").read_text())["kwok"]
    for node in kube.core.list_node(label_selector="type=kwok").items:
        assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == ["127.0.0.1"]
        assert node.status.daemon_endpoints.kubelet_endpoint.port == port


def test_kubectl_logs_reads_a_kwok_runner_through_the_api_server(kube: Kubectl, cluster: ClusterInfo,
                                                                   namespace: str) -> None:
    running_runner(kube, namespace, "job1", "a")
    out = kubectl(cluster, "-n", namespace, "logs", "job1-a-runner", "--tail=2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[-1].endswith("the end of the log"), lines


async def test_a_runner_log_tail_is_kept_in_one_labelled_artifact_configmap(kube: Kubectl, namespace: str,
                                                                             api: Kube) -> None:
    pod = running_runner(kube, namespace, "job1", "build-api")
    full = served_log(kube, namespace, "job1-build-api-runner")
    assert full == runner_log_text()  # the generated log, longer than any tail

    data = full.encode()
    kib = next(k for k in range(1, 65) if data[-k * 1024] & 0xC0 == 0x80)  # a tail that starts inside a character
    [kept] = await keep_logs(api, namespace, [pod], job="job1", job_uid=JOB_UID, tail_kib=kib, read_timeout=10,
                             concurrency=4, log=Bound(test="logkeeper"))
    name = kept_log_name("job1-build-api-runner", JOB_UID)
    assert (kept.pod, kept.task, kept.config_map, kept.error, kept.truncated) == (
        "job1-build-api-runner", "build-api", name, None, True)
    cm = kube.core.read_namespaced_config_map(name, namespace)
    assert cm.metadata.labels == {"necrocode.io/artifact": "true", "necrocode.io/kept-log": "true",
                                  "necrocode.io/job": "job1", "necrocode.io/task": "build-api",
                                  "necrocode.io/job-uid": JOB_UID}
    assert cm.metadata.annotations["necrocode.io/log-of"] == "job1-build-api-runner"
    assert cm.metadata.annotations["necrocode.io/log-truncated"] == "true"
    text = cm.data["log"]
    assert text == last_bytes(full, kib * 1024)  # exactly the end: the last N KiB, the cut character left out
    assert kib * 1024 - 4 < kept.bytes == len(text.encode()) < kib * 1024
    assert text.endswith("the end of the log\n")

    # a second reading (during the grace, or after an operator restart) updates the same ConfigMap
    [again] = await keep_logs(api, namespace, [pod], job="job1", job_uid=JOB_UID, tail_kib=kib + 1, read_timeout=10,
                              already_kept=[kept])
    assert again.config_map == name and again.bytes > kept.bytes
    assert [c.metadata.name for c in kept_logs(kube, namespace)] == [name]
    assert kube.core.read_namespaced_config_map(name, namespace).data["log"] == last_bytes(full, (kib + 1) * 1024)

    # the largest tail the settings allow fits in a ConfigMap (the generated log is longer still)
    [largest] = await keep_logs(api, namespace, [pod], job="job1", job_uid=JOB_UID, tail_kib=512, read_timeout=10)
    assert largest.truncated and len(data) > 512 * 1024
    assert kube.core.read_namespaced_config_map(name, namespace).data["log"] == last_bytes(full, 512 * 1024)


async def test_lost_node_and_missing_pod_are_reported_not_waited_for(kube: Kubectl, namespace: str, api: Kube,
                                                                      unreachable_node: str) -> None:
    good = running_runner(kube, namespace, "job1", "a")
    kube.create_runner(namespace, "job1", "b", node=unreachable_node)  # stays Pending: no kubelet answers
    lost = kube.api.sanitize_for_serialization(kube.core.read_namespaced_pod("job1-b-runner", namespace))
    try:
        started = time.monotonic()
        out = await keep_logs(api, namespace, [lost, "job1-gone-runner", good], job="job1", job_uid=JOB_UID,
                              tail_kib=1, read_timeout=3, tasks_by_pod={"job1-gone-runner": "gone"})
        took = time.monotonic() - started
    finally:
        kube.core.delete_namespaced_pod("job1-b-runner", namespace, grace_period_seconds=0)
    by_pod = {k.pod: k for k in out}
    assert list(by_pod) == ["job1-b-runner", "job1-gone-runner", "job1-a-runner"]
    assert by_pod["job1-b-runner"].error and by_pod["job1-b-runner"].config_map is None
    assert by_pod["job1-b-runner"].task == "b"
    gone = by_pod["job1-gone-runner"]
    assert gone.config_map is None and gone.task == "gone" and "404" in str(gone.error), gone
    assert by_pod["job1-a-runner"].error is None and by_pod["job1-a-runner"].config_map
    assert took < 3 + 15, took  # bounded by the read timeout, not by the node (loose: a shared machine)
    assert [c.metadata.annotations["necrocode.io/log-of"] for c in kept_logs(kube, namespace)] == ["job1-a-runner"]


async def test_no_cleanup_deletes_a_kept_log(kube: Kubectl, namespace: str, api: Kube) -> None:
    """Even a cleanup that deletes the job's ConfigMap artifacts (preserveArtifacts: false, and
    the requester may) keeps the runner logs a cancellation kept."""
    pod = running_runner(kube, namespace, "job1", "a")
    [kept] = await keep_logs(api, namespace, [pod], job="job1", tail_kib=1, read_timeout=10)
    kube.create_configmap(namespace, "job1-report", "job1", "artifact", task_id="a")
    cleaner = ResourceCleaner(api, namespace, log=Bound(test="logkeeper"), concurrency=4, include_secrets=False)
    out = await cleaner.cleanup("necrocode.io/job=job1", frozenset({"ConfigMap"}), by_uid="uid-x")
    assert out.deleted == ["configmap/job1-report"]
    assert out.preserved == [f"configmap/{kept.config_map}"]
    assert [c.metadata.name for c in kept_logs(kube, namespace)] == [kept.config_map]
