"""Fixtures shared by the real-node tests (marker `realnode`): the node itself (hack/realnode.py,
module-scoped, skipped with exactly what the host lacks), the operator image built without
Docker (hack/build_image.py, cached) and imported into the node's containerd, and a TCP
forwarder that lets pods on the node's bridge reach the API server, which listens on loopback.

A test module takes them with `from tests.support.realnode import *` (only the real-node modules
want them, so they are not in a conftest.py).

**External mode** ($KUBECONFIG set, e.g. kind by `make kind-e2e`): the node is the first one
labelled necrocode.io/node-kind=real, and nothing is read from the pytest machine's disk or from
the local control plane's state: the runners' saved work comes back through the API (their
termination message and log), the operator pods' probes, metrics and token through the API
server (pod proxy, exec, logs). The images must already be on the node:

- `NECROCODE_TEST_IMAGE`: the operator image (the Helm tests skip without it);
- `NECROCODE_TEST_RUNNER_IMAGE`: the runner image (default `necrocode.local/runner:v1`);
- `NECROCODE_TEST_HELM_VALUES`: a values file added to the Helm tests' own, e.g. how the pods
  reach the API server where the `kubernetes` Service does not work (kind needs none);
- `NECROCODE_TEST_APISERVER_FORWARD=HOST:PORT`: run the API server forwarder there (to the
  $KUBECONFIG server), as the local mode does on the real node's bridge.

Tests that need the node this session started (its kubelet's PKI, stopping its kubelet) are
marked `localnode` and skip in external mode.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes.client.rest import ApiException

from tests.support.kube import ClusterInfo, Kubectl, wait_for

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NECROCODE_CACHE", Path.home() / ".cache" / "necrocode"))
# what a test module gets from `from tests.support.realnode import *`: the fixtures (pytest registers
# fixtures found in a test module's namespace)
__all__ = ["apiserver_forwarder", "operator_image", "real_node", "real_node_handle"]

OPERATOR_IMAGE_ENV = "NECROCODE_TEST_IMAGE"
RUNNER_IMAGE_ENV = "NECROCODE_TEST_RUNNER_IMAGE"
HELM_VALUES_ENV = "NECROCODE_TEST_HELM_VALUES"
FORWARD_ENV = "NECROCODE_TEST_APISERVER_FORWARD"


def tool(cluster: ClusterInfo, name: str) -> str:
    """helm or kubectl: the session's own build (local mode), else the cache's, else $PATH's."""
    for d in (cluster.bins, CACHE / "bin"):
        if d is not None and (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is neither in {CACHE / 'bin'} (make tools) nor on $PATH")
    return found


@dataclass
class RealNodeHandle:
    name: str
    node: Any  # realnode.RealNode when this session started it; None on a $KUBECONFIG cluster


def host_ready_for_a_node(cluster: ClusterInfo) -> None:
    """Before this session starts a node of its own: skip with what the host lacks or what holds
    it, after stopping a node that a run killed before its `down` left behind."""
    from hack import realnode

    assert cluster.state_dir is not None
    gaps = realnode.missing(cluster.state_dir, cluster.bins)
    if gaps:
        pytest.skip("real node: this host lacks " + "; ".join(gaps))
    left = realnode.reclaim_abandoned()
    if left:
        pytest.fail("an abandoned real node was stopped but left the host changed:\n" + "\n".join(left))
    busy = realnode.conflicts()
    if busy:
        pytest.skip("real node: " + "; ".join(busy))


def start_real_node(cluster: ClusterInfo, kube: Kubectl) -> Iterator[RealNodeHandle]:
    """The body of a real-node fixture: skip with what is missing, start the node, yield it, stop
    it and fail if the host was left changed."""
    from hack import realnode

    if not cluster.local:
        nodes = kube.core.list_node(label_selector=f"{realnode.LABEL}=real").items
        if not nodes:
            pytest.skip(f"no node labelled {realnode.LABEL}=real in the $KUBECONFIG cluster")
        yield RealNodeHandle(nodes[0].metadata.name, None)
        return
    host_ready_for_a_node(cluster)
    state = Path(tempfile.mkdtemp(prefix="necrocode-realnode-"))
    node = realnode.RealNode(state_dir=state, cluster_dir=cluster.state_dir, bins=cluster.bins, tie_to_parent=True)
    started = time.monotonic()
    name = node.up()
    print(f"\nreal node {name} Ready in {time.monotonic() - started:.1f}s ({state})")
    try:
        yield RealNodeHandle(name, node)
    finally:
        diffs = node.down()
        if diffs:
            pytest.fail("the real node left the host changed:\n" + "\n".join(diffs))
        if not any(str(state) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            shutil.rmtree(state, ignore_errors=True)  # its logs and snapshots are kept only after a failure


@pytest.fixture(scope="module")
def real_node_handle(cluster: ClusterInfo, kube: Kubectl) -> Iterator[RealNodeHandle]:
    yield from start_real_node(cluster, kube)


@pytest.fixture(scope="module")
def real_node(real_node_handle: RealNodeHandle) -> str:
    """The real node's name."""
    return real_node_handle.name


# ----------------------------------------------------------------------------- runner pods
KEEP = "necrocode.io/test-keep-status"  # a finalizer, so the final container status can be read


def runner_image() -> str:
    """hack/ociimage.py's (imported by realnode.py up), or what the cluster was given."""
    return os.environ.get(RUNNER_IMAGE_ENV) or "necrocode.local/runner:v1"


def runner_pod(name: str, node: str, script: str, grace: int, host_artifacts: Path | None = None) -> dict[str, Any]:
    """A reference runner (examples/runner) on the real node, its annotations mounted through the
    downward API. Its saved work is its termination message (the container's terminated state);
    `host_artifacts` also puts its artifact files in that directory of the node's host (only for
    the node this session runs: it must outlive the pod object)."""
    artifacts: dict[str, Any] = (
        {"hostPath": {"path": str(host_artifacts), "type": "DirectoryOrCreate"}} if host_artifacts else {"emptyDir": {}})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"necrocode.io/role": "runner"}, "finalizers": [KEEP]},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "necrocode.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": grace,
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "containers": [{
                "name": "runner", "image": runner_image(), "imagePullPolicy": "Never",
                "command": [f"/runner/{script}"],
                "env": [{"name": "STEP_SECONDS", "value": "0.2"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "artifacts", "mountPath": "/artifacts"},
                                 {"name": "podinfo", "mountPath": "/etc/podinfo"}],
            }],
            "volumes": [
                {"name": "artifacts", **artifacts},
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
            ],
        },
    }


def start_job_runners(kube: Kubectl, ns: str, job: str, node: str) -> dict[str, str]:
    """Two running tasks of `job` on the real node: "graceful" (saves its work on SIGTERM) and
    "stubborn" (ignores SIGTERM). Returns task id -> runner pod name."""
    out = {}
    for tid, script in (("graceful", "runner.sh"), ("stubborn", "ignore-sigterm.sh")):
        pod = runner_pod(f"{job}-{tid}-runner", node, script, grace=30)
        # both read the cancel-requested annotation (the reference runner's way): they opt in
        pod["metadata"]["labels"].update({"necrocode.io/job": job, "necrocode.io/task": tid,
                                          "necrocode.io/signal": "annotation"})
        pod["metadata"]["finalizers"] = []
        kube.core.create_namespaced_pod(ns, pod)
        kube.create_task(ns, job, tid, "Running", runner=pod["metadata"]["name"])
        out[tid] = pod["metadata"]["name"]
    return out


def pod_log(kube: Kubectl, ns: str, name: str, container: str | None = None) -> str:
    """A container's log through the API server ("" while there is none). Read raw: the client
    would turn a log that is one JSON document into its Python repr."""
    try:
        resp = kube.core.read_namespaced_pod_log(name, ns, container=container, _preload_content=False,
                                                 _request_timeout=10)
    except ApiException:
        return ""
    return str(resp.data.decode(errors="replace"))


def wait_working(kube: Kubectl, ns: str, name: str, timeout: float = 60) -> None:
    """The runner did its first work step (its log says so)."""
    wait_for(lambda: "working (step 1)" in pod_log(kube, ns, name), timeout=timeout,
             what=f"runner {name}'s first work step (its log)")


def parse_report(text: str) -> dict[str, str]:
    """A runner's report line (its termination message), e.g.
    `steps=5 ended=sigterm at=... up=123.45 boot=<id> cancel-requested=<the rest of the line>`."""
    head, sep, cancel = text.strip().partition("cancel-requested=")
    out = dict(field.split("=", 1) for field in head.split() if "=" in field)
    if sep:
        out["cancel-requested"] = cancel
    return out


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


BOOT_ID = _boot_id()


@dataclass(frozen=True)
class Moment:
    """A moment of the test, on the wall clock and on CLOCK_BOOTTIME (the runners' `up`)."""
    wall: float
    boot: float | None

    @classmethod
    def now(cls) -> Moment:
        boottime = getattr(time, "CLOCK_BOOTTIME", None)
        return cls(time.time(), time.clock_gettime(boottime) if boottime is not None and BOOT_ID else None)

    def until(self, report: dict[str, str], finished_at: datetime | None) -> tuple[float, float]:
        """Seconds from this moment to when the runner wrote `report`, and the uncertainty.

        On this machine's kernel (the local real node; kind's node containers on a Linux Docker
        host) the report's `up` is on our CLOCK_BOOTTIME: 10 ms. Elsewhere (Docker Desktop's VM)
        it falls back to the container's finishedAt, whole seconds, just after the report."""
        up = report.get("up", "-")
        if self.boot is not None and report.get("boot") == BOOT_ID and up != "-":
            return float(up) - self.boot, 0.02
        assert finished_at is not None, f"the runner's clock is not ours and no finishedAt: {report}"
        return finished_at.timestamp() + 0.5 - self.wall, 1.0


class ExitWatch:
    """Records each pod's container terminated state from a watch (written by the kubelet just
    before the pod object goes away; polling could miss it): exit code, termination message (the
    runner's report), finishedAt; and each pod's annotations as its deletion began (the first
    version with a deletionTimestamp): what the pod carried when its SIGTERM was asked for."""

    def __init__(self, kube: Kubectl, ns: str, selector: str) -> None:
        from kubernetes import watch

        self.exits: dict[str, Any] = {}  # pod name -> V1ContainerStateTerminated
        self.annotations_when_deleted: dict[str, dict[str, str]] = {}  # pod name -> its annotations
        self._stopped = False
        self._w = watch.Watch()
        self._t = threading.Thread(target=self._run, args=(kube, ns, selector), daemon=True)
        self._t.start()

    def _run(self, kube: Kubectl, ns: str, selector: str) -> None:
        try:
            for ev in self._w.stream(kube.core.list_namespaced_pod, ns, label_selector=selector,
                                     timeout_seconds=300):
                pod = ev["object"]
                if pod.metadata.deletion_timestamp and pod.metadata.name not in self.annotations_when_deleted:
                    self.annotations_when_deleted[pod.metadata.name] = dict(pod.metadata.annotations or {})
                for c in pod.status.container_statuses or []:
                    if c.state.terminated:
                        self.exits[pod.metadata.name] = c.state.terminated
        except Exception:  # the stream closed under stop(); a failure shows up as a missing exit code
            if not self._stopped:
                raise

    def code(self, name: str) -> int:
        return int(self.exits[name].exit_code)

    def report(self, name: str) -> dict[str, str]:
        return parse_report(self.exits[name].message or "")

    def stop(self) -> None:
        self._stopped = True
        self._w.stop()


# ----------------------------------------------------------------------------- the operator image
@pytest.fixture(scope="module")
def operator_image(real_node_handle: RealNodeHandle) -> str:
    """hack/build_image.py (cached: a warm build only checks the cache), imported into the real
    node's containerd. Returns the image name. In external mode: $NECROCODE_TEST_IMAGE, already
    on the node (`kind load docker-image`, or `python -m hack.build_image --import`)."""
    if real_node_handle.node is None:
        image = os.environ.get(OPERATOR_IMAGE_ENV)
        if not image:
            pytest.skip(f"external cluster: set {OPERATOR_IMAGE_ENV} to the operator image loaded into its "
                        "real node (make kind-e2e does)")
        return image
    from hack import build_image as bi

    t0 = time.monotonic()
    report = bi.build()
    built = time.monotonic() - t0
    t1 = time.monotonic()
    real_node_handle.node.import_image(Path(report["tarball"]))
    print(f"\noperator image {report['image']}: {report['image_bytes'] / 2**20:.1f} MiB, built in {built:.1f}s "
          f"(rebuilt: {', '.join(report['rebuilt']) or 'nothing'}), imported in {time.monotonic() - t1:.1f}s")
    return str(report["image"])


# ----------------------------------------------------------------------------- API server forwarder
class TcpForwarder:
    """Listens on `host` (the real node's bridge address) and forwards each connection to the
    API server on loopback, bytes untouched (TLS end to end): pods on the node's bridge reach the
    API server at `host:port`, with no kube-proxy and no hostNetwork."""

    def __init__(self, host: str, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.accepted = 0
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True, name="apiserver-forwarder").start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.accepted += 1
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self.lock:
                for s in (src, dst):
                    if s in self.conns:
                        self.conns.discard(s)
                        s.close()

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()
        with self.lock:
            for s in list(self.conns):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()


@pytest.fixture(scope="module")
def apiserver_forwarder(cluster: ClusterInfo, kube: Kubectl,
                        real_node_handle: RealNodeHandle) -> Iterator[TcpForwarder | None]:
    """Local mode: a forwarder on the real node's bridge address, port 443, to the API server on
    loopback. External mode: none (the cluster's `kubernetes` Service works), unless
    $NECROCODE_TEST_APISERVER_FORWARD=HOST:PORT asks for one there, to the $KUBECONFIG server."""
    import json

    from hack import realnode

    if real_node_handle.node is not None and cluster.state_dir is not None:
        port = json.loads((cluster.state_dir / "ports.json").read_text())["apiserver"]
        # port 443: kopf's in-cluster login (kopf.login_with_service_account) always connects to
        # https://kubernetes.default.svc, whatever KUBERNETES_SERVICE_HOST/PORT say; with hostAliases
        # mapping that name to the node's bridge address, this port is where it lands
        listen, target = (realnode.NODE_IP, 443), ("127.0.0.1", port)
    elif os.environ.get(FORWARD_ENV):
        host, _, lport = os.environ[FORWARD_ENV].rpartition(":")
        server = urlparse(kube.api.configuration.host)
        assert server.hostname, kube.api.configuration.host
        listen, target = (host, int(lport)), (server.hostname, server.port or 443)
    else:
        yield None
        return
    try:
        fwd = TcpForwarder(listen[0], target, port=listen[1])
    except OSError as exc:
        pytest.skip(f"cannot listen on {listen[0]}:{listen[1]} for the pods' API server forwarder: {exc}")
    try:
        yield fwd
    finally:
        fwd.stop()
