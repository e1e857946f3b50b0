"""Fixtures shared by the real-node tests (marker `realnode`): the node itself (hack/realnode.py,
module-scoped, skipped with exactly what the host lacks), the operator image built without
Docker (hack/build-image.py, cached) and imported into the node's containerd, and a TCP
forwarder that lets pods on the node's bridge reach the API server, which listens on loopback.

A test module takes them with `from realnode_fixtures import *`. (Not a tests/cluster/conftest.py:
a second rootless conftest module would replace tests/conftest.py as `conftest` in sys.modules,
and the modules that do `from conftest import operator_env` would break.)
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kube_helpers import ClusterInfo, Kubectl

REPO = Path(__file__).resolve().parents[2]
# what a test module gets from `from realnode_fixtures import *`: the fixtures (pytest registers
# fixtures found in a test module's namespace)
__all__ = ["apiserver_forwarder", "operator_image", "real_node", "real_node_handle"]


@dataclass
class RealNodeHandle:
    name: str
    node: Any  # realnode.RealNode when this session started it; None on a $KUBECONFIG cluster


def start_real_node(cluster: ClusterInfo, kube: Kubectl) -> Iterator[RealNodeHandle]:
    """The body of a real-node fixture: skip with what is missing, start the node, yield it, stop
    it and fail if the host was left changed."""
    import realnode

    if not cluster.local:
        nodes = kube.core.list_node(label_selector=f"{realnode.LABEL}=real").items
        if not nodes:
            pytest.skip(f"no node labelled {realnode.LABEL}=real in the $KUBECONFIG cluster")
        yield RealNodeHandle(nodes[0].metadata.name, None)
        return
    assert cluster.state_dir is not None
    gaps = realnode.missing(cluster.state_dir, cluster.bins)
    if gaps:
        pytest.skip("real node: this host lacks " + "; ".join(gaps))
    busy = realnode.conflicts()
    if busy:
        pytest.skip("real node: " + "; ".join(busy))
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
RUNNER_IMAGE = "necrocode.local/runner:v1"
KEEP = "necrocode.io/test-keep-status"  # a finalizer, so the final container status can be read


def runner_pod(name: str, node: str, script: str, artifacts: Path, grace: int) -> dict[str, Any]:
    """A reference runner (examples/runner) on the real node, its artifacts in a host directory,
    its annotations mounted through the downward API."""
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
                "name": "runner", "image": RUNNER_IMAGE, "imagePullPolicy": "Never",
                "command": [f"/runner/{script}"],
                "env": [{"name": "STEP_SECONDS", "value": "0.2"}],
                "volumeMounts": [{"name": "artifacts", "mountPath": "/artifacts"},
                                 {"name": "podinfo", "mountPath": "/etc/podinfo"}],
            }],
            "volumes": [
                {"name": "artifacts", "hostPath": {"path": str(artifacts), "type": "DirectoryOrCreate"}},
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
            ],
        },
    }


def start_job_runners(kube: Kubectl, ns: str, job: str, node: str, base: Path) -> dict[str, tuple[str, Path]]:
    """Two running tasks of `job` on the real node: "graceful" (saves its work on SIGTERM) and
    "stubborn" (ignores SIGTERM). Returns task id -> (runner pod name, artifact directory)."""
    out = {}
    for tid, script in (("graceful", "runner.sh"), ("stubborn", "ignore-sigterm.sh")):
        art = base / tid
        art.mkdir()
        pod = runner_pod(f"{job}-{tid}-runner", node, script, art, grace=30)
        pod["metadata"]["labels"].update({"necrocode.io/job": job, "necrocode.io/task": tid})
        pod["metadata"]["finalizers"] = []
        kube.core.create_namespaced_pod(ns, pod)
        kube.create_task(ns, job, tid, "Running", runner=pod["metadata"]["name"])
        out[tid] = (pod["metadata"]["name"], art)
    return out


# ----------------------------------------------------------------------------- the operator image
def build_image_module() -> Any:
    spec = importlib.util.spec_from_file_location("build_image_cli", REPO / "hack" / "build-image.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def operator_image(real_node_handle: RealNodeHandle) -> str:
    """hack/build-image.py (cached: a warm build only checks the cache), imported into the real
    node's containerd. Returns the image name."""
    if real_node_handle.node is None:
        pytest.skip("the operator image is imported into the node this session started (not a $KUBECONFIG one)")
    bi = build_image_module()
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
def apiserver_forwarder(cluster: ClusterInfo, real_node_handle: RealNodeHandle) -> Iterator[TcpForwarder]:
    import json

    import realnode

    if real_node_handle.node is None or cluster.state_dir is None:
        pytest.skip("forwards to the local control plane's API server")
    port = json.loads((cluster.state_dir / "ports.json").read_text())["apiserver"]
    # port 443: kopf's in-cluster login (kopf.login_with_service_account) always connects to
    # https://kubernetes.default.svc, whatever KUBERNETES_SERVICE_HOST/PORT say; with hostAliases
    # mapping that name to the node's bridge address, this port is where it lands
    try:
        fwd = TcpForwarder(realnode.NODE_IP, ("127.0.0.1", port), port=443)
    except OSError as exc:
        pytest.skip(f"cannot listen on {realnode.NODE_IP}:443 for the pods' API server forwarder: {exc}")
    try:
        yield fwd
    finally:
        fwd.stop()
