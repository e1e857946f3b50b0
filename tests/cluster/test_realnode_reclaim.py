"""A real node whose owner was killed with no chance to run `down` (kill -9 of pytest, the
machine's processes lost) leaves its bridge, cgroups, shims, mounts and pod processes. Once, that
made the next CI run fail: every real-node test refused to start next to "another real node".

The next `up` (and the test fixture) find such a node through hack/realnode.py's POINTER, see
that its owner and every process it started are gone, and stop it, restoring the host; a node
whose owner lives is left alone, whoever asks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from tests.support.kube import ClusterInfo, Kubectl, wait_for
from tests.support.realnode import REPO, host_ready_for_a_node, runner_pod, wait_working

pytestmark = [pytest.mark.realnode, pytest.mark.localnode]

# The owner: a process that starts a node tied to itself (as the test fixture does) and then
# only waits, so that the test can kill it the hard way.
OWNER = """
import sys, time
from pathlib import Path
from hack import realnode
node = realnode.RealNode(state_dir=Path(sys.argv[1]), cluster_dir=Path(sys.argv[2]), bins=Path(sys.argv[3]),
                         tie_to_parent=True)
print(node.up(), flush=True)
time.sleep(3600)
"""


def test_a_node_whose_owner_was_killed_is_stopped_by_the_next_run_and_only_then(
        cluster: ClusterInfo, kube: Kubectl, solo_namespace: str) -> None:
    from hack import realnode

    if not cluster.local:
        pytest.skip("needs a node this session starts itself (hack/realnode.py)")
    host_ready_for_a_node(cluster)
    assert cluster.state_dir is not None
    ns, runner = solo_namespace, "orphan-runner"
    state = Path(tempfile.mkdtemp(prefix="necrocode-realnode-")).resolve()
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(state), str(cluster.state_dir), str(cluster.bins or realnode.CACHE / "bin")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        name = owner.stdout.readline().strip()
        assert name, f"the owner's `up` failed (exit {owner.wait()}); its logs: {state / 'logs'}"
        node = realnode.RealNode(state_dir=state)

        # while its owner lives, the node is somebody's: nothing takes it away
        assert realnode.read_pointer() == state
        assert not node.abandoned()
        assert realnode.reclaim_abandoned() == []
        busy = realnode.conflicts()
        assert busy and all(str(state) in c for c in busy if "exists" in c), busy  # says whose it is

        # a runner on it, whose container, shim and mounts outlive the owner
        pod = runner_pod(runner, name, "runner.sh", grace=5)
        pod["metadata"]["finalizers"] = []
        kube.core.create_namespaced_pod(ns, pod)
        wait_working(kube, ns, runner, timeout=60)
        runners = node.pod_processes()
        assert runners

        owner.kill()  # SIGKILL: no `down`; the kubelet and containerd die with it (PR_SET_PDEATHSIG)
        owner.wait()
        started = dict(node.state["pids"])
        wait_for(lambda: not any(realnode.alive(p) for p in started.values()), timeout=30,
                 what="the kubelet and containerd to die with their owner")
        assert node.abandoned()
        assert node.pod_processes(), "the runner should outlive the node's owner (its shim keeps it)"
        assert realnode.conflicts(), "what a killed owner leaves should stop the next node"

        # what the next run's `up` and the test fixture do first
        assert realnode.reclaim_abandoned() == [], "the host differs from before the abandoned node's `up`"
        assert realnode.conflicts() == []
        assert not any(realnode.alive(p) for p in runners), "a runner of the abandoned node is still running"
        assert not realnode.POINTER.exists()
        assert not kube.core.list_node(field_selector=f"metadata.name={name}").items
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        realnode.RealNode(state_dir=state).down()  # finds nothing after a reclaim
        try:
            kube.core.delete_namespaced_pod(runner, ns, grace_period_seconds=0)
        except ApiException:
            pass
        if not any(str(state) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            shutil.rmtree(state, ignore_errors=True)
