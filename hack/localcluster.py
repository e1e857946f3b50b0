#!/usr/bin/env python3
"""A real, local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, on loopback, from binaries built by hack/build-tools.sh.

Used by `make cluster-up` / `make cluster-down`, `make demo` and the pytest session fixture.

    python hack/localcluster.py up [--dir DIR] [--nodes N]   start; prints the kubeconfig path
    python hack/localcluster.py down [--dir DIR]             stop every process it started
    python hack/localcluster.py status [--dir DIR]

Everything lives in one state directory (default ~/.cache/necrocode/cluster): certificates,
etcd data, logs (`logs/<component>.log`), `pids` and `kubeconfig`. Only the standard library
is used, so it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
CACHE = Path(os.environ.get("NECROCODE_CACHE", Path.home() / ".cache" / "necrocode"))
DEFAULT_DIR = CACHE / "cluster"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KUBELET_CLIENT = "kube-apiserver-kubelet-client"


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def bin_dir(build: bool = True) -> Path:
    """The directory of built binaries; builds what is missing (a warm cache builds nothing)."""
    if build:
        proc = subprocess.run(
            ["bash", str(HACK / "build-tools.sh")], stdout=subprocess.PIPE, text=True, check=False
        )
        if proc.returncode != 0:
            raise SystemExit("hack/build-tools.sh failed (see the lines above)")
        return Path(proc.stdout.strip().splitlines()[-1])
    return CACHE / "bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the thread that started it dies
    (PR_SET_PDEATHSIG): the one way every process of a test run is tied to the run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGKILL this child when the process that started it dies, so an
    interrupted or killed test run leaves no control-plane process behind. (SIGKILL, not
    SIGTERM: kube-apiserver's graceful shutdown can hang once etcd is gone; a test cluster's
    state is thrown away anyway.)"""
    die_with_parent()
    os.setsid()


def _own_session() -> None:  # pragma: no cover
    os.setsid()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class LocalCluster:
    """One local control plane. `up()` is idempotent for a running cluster in the same dir."""

    dir: Path = DEFAULT_DIR
    nodes: int = 3
    tie_to_parent: bool = False
    bins: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    profiling: bool = False
    """Serve /debug/pprof on the API server (benchmarks: where its CPU goes)."""

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    # ---------------------------------------------------------------- lifecycle
    def up(self) -> Path:
        if self.running():
            return self.kubeconfig
        self.down()  # anything half-started before
        self.bins = self.bins or bin_dir()
        shutil.rmtree(self.dir, ignore_errors=True)
        for d in (self.dir, self.pki, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.ports = {
            "etcd": free_port(),
            "etcd-peer": free_port(),
            "apiserver": free_port(),
            "kwok": free_port(),
        }
        (self.dir / "ports.json").write_text(json.dumps(self.ports))
        try:
            self._certs()
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready()
            self._start("kube-controller-manager", self._kcm_args())
            self._start("kube-scheduler", self._scheduler_args())
            self._start("kwok", self._kwok_args())
            self._create_nodes()
            self._wait_nodes_ready()
        except BaseException:
            self.down()
            raise
        return self.kubeconfig

    def down(self) -> None:
        """Stop every process recorded in `pids`: SIGTERM to its process group, then SIGKILL
        after 10 s. etcd goes last: kube-apiserver's graceful shutdown ends in about a second
        while etcd answers, and waits out the 10 s (then is killed) when etcd went with it."""
        pids = self._pids()
        etcd = {k: v for k, v in pids.items() if k == "etcd"}
        for group in ({k: v for k, v in pids.items() if k != "etcd"}, etcd):
            for pid in group.values():
                _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in group.values()):
                time.sleep(0.05)
            for pid in group.values():
                if _alive(pid):
                    _signal_group(pid, signal.SIGKILL)
        pid_file = self.dir / "pids"
        if pid_file.exists():
            pid_file.unlink()

    def restart(self, component: str, grace: float = 5.0) -> None:
        """Stop one component by its recorded pid and start it again with the same arguments,
        ports and data directory, then wait until it serves again (fault-injection tests: an
        API server or etcd restarted under load). SIGTERM, then SIGKILL after `grace` seconds,
        as the kubelet does with a static pod: kube-apiserver stops listening at once but waits
        up to its 60 s request timeout for open (watch) connections, and etcd for its clients."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
        self.bins = self.bins or bin_dir(build=False)
        self._port()  # load ports.json when this object did not start the cluster
        pid = self._pids().get(component)
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                _signal_group(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        if component == "etcd":
            self._start_etcd()  # waits for /health
            self._wait_ready()  # the API server's view: its /readyz includes the etcd check
        elif component == "kube-apiserver":
            self._start_apiserver()
            self._wait_ready()
        elif component == "kube-controller-manager":
            self._start(component, self._kcm_args())
        elif component == "kube-scheduler":
            self._start(component, self._scheduler_args())
        else:
            self._start(component, self._kwok_args())
            self._wait_nodes_ready()

    def running(self) -> bool:
        pids = self._pids()
        if not pids or not all(_alive(p) for p in pids.values()):
            return False
        try:
            self._get("/readyz")
            return True
        except Exception:
            return False

    # ---------------------------------------------------------------- certificates
    def _certs(self) -> None:
        p = self.pki
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "3650", "-subj", "/CN=necrocode-local-ca", cwd=p)
        sans = ("subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                "DNS:kubernetes.default.svc.cluster.local")
        self._leaf("apiserver", "/CN=kube-apiserver", ext=sans)
        self._leaf("admin", "/O=system:masters/CN=necrocode-admin", ext=None)
        self._leaf("kcm", "/CN=system:kube-controller-manager", ext=None)
        self._leaf("scheduler", "/CN=system:kube-scheduler", ext=None)
        # the API server's identity towards kubelets (logs, exec, port-forward on the real node),
        # bound to system:kubelet-api-admin once the API server runs
        self._leaf("apiserver-kubelet-client", f"/CN={KUBELET_CLIENT}", ext=None)
        # kwok's kubelet server (pod logs), on loopback only: the API server verifies it as it
        # verifies the real node's kubelet, against this CA
        self._leaf("kwok-serving", "/CN=kwok-kubelet", ext="subjectAltName=IP:127.0.0.1,DNS:localhost")
        openssl("genrsa", "-out", "sa.key", "2048", cwd=p)
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=p)
        for name, user in (("kubeconfig", "admin"), ("kcm.kubeconfig", "kcm"),
                           ("scheduler.kubeconfig", "scheduler")):
            self._write_kubeconfig(self.dir / name, user)

    def _leaf(self, name: str, subject: str, ext: str | None) -> None:
        p = self.pki
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=p)
        extfile = p / f"{name}.ext"
        usage = "serverAuth" if ext else "clientAuth"
        extfile.write_text(f"extendedKeyUsage={usage}\n" + (ext + "\n" if ext else ""))
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", "-extfile", str(extfile), cwd=p)

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        server = f"https://127.0.0.1:{self.ports['apiserver']}"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: necrocode-local\n  cluster:\n"
            f"    server: {server}\n    certificate-authority: {self.pki / 'ca.crt'}\n"
            f"users:\n- name: {user}\n  user:\n"
            f"    client-certificate: {self.pki / (user + '.crt')}\n"
            f"    client-key: {self.pki / (user + '.key')}\n"
            "contexts:\n- name: necrocode-local\n  context:\n"
            f"    cluster: necrocode-local\n    user: {user}\n    namespace: default\n"
            "current-context: necrocode-local\n"
        )

    # ---------------------------------------------------------------- processes
    def _start(self, name: str, args: list[str]) -> None:
        assert self.bins is not None
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [str(self.bins / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if self.tie_to_parent else _own_session,
            cwd=self.dir,
        )
        pids = self._pids()
        pids[name] = proc.pid
        (self.dir / "pids").write_text(json.dumps(pids))
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once; see {self.logs / (name + '.log')}:\n"
                               + _tail(self.logs / f"{name}.log"))

    def _pids(self) -> dict[str, int]:
        f = self.dir / "pids"
        if not f.exists():
            return {}
        try:
            return {k: int(v) for k, v in json.loads(f.read_text()).items()}
        except ValueError:
            return {}

    def _start_etcd(self) -> None:
        c, peer = self.ports["etcd"], self.ports["etcd-peer"]
        self._start("etcd", [
            "--name=necrocode", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{c}", f"--advertise-client-urls=http://127.0.0.1:{c}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=necrocode=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--quota-backend-bytes=8589934592", "--log-level=warn",
        ])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{c}/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("etcd did not become healthy:\n" + _tail(self.logs / "etcd.log"))

    def _start_apiserver(self) -> None:
        p = self.pki
        self._start("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            # Node: a kubelet (the real node) may touch only its own node and its pods' objects
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            f"--profiling={'true' if self.profiling else 'false'}",
            "--max-requests-inflight=800", "--max-mutating-requests-inflight=400",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--v=1",
        ])

    def _kcm_args(self) -> list[str]:
        p = self.pki
        return [
            f"--kubeconfig={self.dir / 'kcm.kubeconfig'}",
            f"--authentication-kubeconfig={self.dir / 'kcm.kubeconfig'}",
            f"--authorization-kubeconfig={self.dir / 'kcm.kubeconfig'}",
            "--bind-address=127.0.0.1", "--secure-port=0",
            "--leader-elect=false",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
            "--use-service-account-credentials=true",
            # flex volume plugins: a directory of ours, not /usr/libexec/kubernetes on the host
            f"--flex-volume-plugin-dir={self.dir / 'flexvolume'}",
            "--kube-api-qps=100", "--kube-api-burst=200",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        kc = self.dir / "scheduler.kubeconfig"
        return [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            "--kube-api-qps=100", "--kube-api-burst=200", "--v=1",
        ]

    @property
    def runner_log(self) -> Path:
        """The log kwok serves for every pod it runs (kubectl logs, the pods/log subresource)."""
        return self.dir / "kwok" / "runner.log"

    def _kwok_args(self) -> list[str]:
        """kwok's nodes are at 127.0.0.1 with kwok's own server as their kubelet port: the API
        server reaches it there (pods/log), on loopback only, never at a made-up node address."""
        port, p = self.ports["kwok"], self.pki
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={HACK / 'kwok' / 'stages.yaml'}",
            f"--config={self._kwok_logs()}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{port}", f"--node-port={port}", "--node-ip=127.0.0.1",
            f"--tls-cert-file={p / 'kwok-serving.crt'}", f"--tls-private-key-file={p / 'kwok-serving.key'}",
            "--cidr=10.244.0.0/16",
        ]

    def _kwok_logs(self) -> Path:
        """kwok's ClusterLogs: every pod it runs serves `runner_log` (kwok v0.8 selects pods by
        namespace and name only, not by label, so runner pods are not singled out). The log is
        generated once per cluster: numbered lines with multi-byte characters, longer than any
        tail the operator keeps (NECROCODE_LOG_TAIL_KIB is at most 512), its last line saying so."""
        config = self.dir / "kwok" / "logs.yaml"
        if config.exists():
            return config
        config.parent.mkdir(parents=True, exist_ok=True)
        write_runner_log(self.runner_log)
        config.write_text(
            "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterLogs\n"
            "metadata:\n  name: necrocode-runner-log\n"
            f"spec:\n  selector: {{}}\n  logs:\n  - logsFile: {json.dumps(str(self.runner_log))}\n"
            "    follow: false\n")
        return config

    # ---------------------------------------------------------------- API access (stdlib only)
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _port(self) -> int:
        if not self.ports:
            self.ports = json.loads((self.dir / "ports.json").read_text())
        return self.ports["apiserver"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"https://127.0.0.1:{self._port()}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as r:
            raw = r.read()
        try:
            return json.loads(raw)
        except ValueError:
            return {"raw": raw.decode()}

    def _get(self, path: str) -> dict:
        return self._request("GET", path)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        last = ""
        while time.monotonic() < deadline:
            if self._pids().get("kube-apiserver") and not _alive(self._pids()["kube-apiserver"]):
                break
            try:
                if self._get("/readyz").get("raw") == "ok":
                    return
            except Exception as exc:  # not up yet
                last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready ({last}):\n" + _tail(self.logs / "kube-apiserver.log"))

    def _bind_kubelet_client(self) -> None:
        """What the API server may do on a kubelet (logs, exec): the built-in role for it."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "necrocode:kube-apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT}],
        }
        try:
            self._request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def _create_nodes(self) -> None:
        self._bind_kubelet_client()
        for i in range(self.nodes):
            node = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": f"kwok-node-{i}",
                    "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-node-{i}",
                               "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
                },
                "status": {
                    "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "10000"},
                    "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "10000"},
                },
            }
            try:
                self._request("POST", "/api/v1/nodes", node)
            except urllib.error.HTTPError as exc:
                if exc.code != 409:
                    raise

    def _wait_nodes_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            items = self._get("/api/v1/nodes").get("items", [])
            ready = [n for n in items if any(c.get("type") == "Ready" and c.get("status") == "True"
                                             for c in n.get("status", {}).get("conditions", []))]
            if len(ready) >= self.nodes:
                return
            time.sleep(0.3)
        raise RuntimeError("kwok nodes did not become Ready:\n" + _tail(self.logs / "kwok.log"))


RUNNER_LOG_LINES = 10000
"""Lines of the generated runner log (~590 KiB: longer than the largest tail kept, 512 KiB)."""


def write_runner_log(path: Path, lines: int = RUNNER_LOG_LINES) -> None:
    """A runner's log as kwok reads it: the CRI format the kubelet writes (`<time> stdout F <line>`),
    which kwok decodes into the plain lines a client of pods/log gets (`runner_log_text`)."""
    with path.open("w", encoding="utf-8") as f:
        for i, line in enumerate(runner_log_lines(lines)):
            f.write(f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000000000Z stdout F {line}\n")


def runner_log_lines(lines: int = RUNNER_LOG_LINES) -> list[str]:
    """Numbered lines, each with two- and three-byte UTF-8 characters, so that a tail cut at a
    byte count lands inside a character for some counts; the last says it is the end."""
    out = [f"runner line {i:06d}/{lines:06d}: édition ✓ {'.' * (i % 37)}" for i in range(1, lines)]
    return [*out, f"runner line {lines:06d}/{lines:06d}: the end of the log"]


def runner_log_text(lines: int = RUNNER_LOG_LINES) -> str:
    """What GET pods/<name>/log answers for a pod on a kwok node."""
    return "".join(line + "\n" for line in runner_log_lines(lines))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "build"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory")
    ap.add_argument("--nodes", type=int, default=int(os.environ.get("NECROCODE_KWOK_NODES", "3")),
                    help="number of kwok nodes (default 3, env NECROCODE_KWOK_NODES)")
    a = ap.parse_args(argv)
    cluster = LocalCluster(dir=a.dir, nodes=a.nodes)
    if a.command == "build":
        print(bin_dir())
    elif a.command == "up":
        started = time.monotonic()
        print(f"starting the local control plane in {a.dir} ...", file=sys.stderr)
        kc = cluster.up()
        print(f"ready in {time.monotonic() - started:.1f}s; export KUBECONFIG={kc}", file=sys.stderr)
        print(kc)
    elif a.command == "down":
        cluster.down()
        print("stopped", file=sys.stderr)
    else:
        up = cluster.running()
        print("running" if up else "stopped")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
