"""The processes under measurement: the local control plane of the run (with the CRDs and the
admission policy), the operator as a subprocess (its memory, connections and API calls), and
the CPU meter over all of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import NODES, REPO
from hack.localcluster import LocalCluster, bin_dir, free_port
from tests.support.kube import Kubectl  # the harness's one import from tests/


def control_plane(state: Path, profiling: bool) -> LocalCluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and NODES kwok nodes, tied
    to this process (they stop with it)."""
    return LocalCluster(dir=state, nodes=NODES, tie_to_parent=True, bins=bin_dir(), profiling=profiling)


def install_crds(kubeconfig: Path) -> None:
    """The CRDs and the admission policies, as the tests install them; returns once they serve."""
    Kubectl(kubeconfig).install_crds()


class Operator:
    """`python -m necrocode.main` serving the whole cluster (optionally under py-spy); its API calls by verb
    from its /metrics, its memory from /proc."""

    def __init__(self, kubeconfig: Path, out: Path, env: dict[str, str | None] | None = None,
                 tag: str = "operator"):
        """`env`: variables set for it (a None value unsets one inherited from the harness)."""
        self.kubeconfig, self.out, self.tag = kubeconfig, out, tag
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, profile: bool = False) -> None:
        env = {**os.environ, "NECROCODE_KUBECONFIG": str(self.kubeconfig), "KUBECONFIG": str(self.kubeconfig),
               "NECROCODE_METRICS_PORT": str(self.port), "NECROCODE_METRICS_ADDR": "127.0.0.1",
               "PYTHONPATH": str(REPO / "operator")}
        for k, v in self.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        # the whole cluster, as the chart installs it by default (watchNamespaces empty); the
        # benchmark's namespaces (nb-*) are the only ones with cancellations in them
        cmd = [sys.executable, "-m", "necrocode.main", "--liveness", "",
               "--log-format", "json"]
        if profile:
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "200", "--format", "raw",
                   "-o", str(self.out / f"{self.tag}.speedscope.json"), "--", *cmd]
        log = open(self.out / f"{self.tag}.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited; see {self.out / (self.tag + '.log')}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("operator /metrics did not come up")

    @property
    def pid(self) -> int:
        """The Python process (under py-spy, its child)."""
        assert self.proc is not None
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            c = kids.read_text().split()
            if c and "py-spy" in Path(f"/proc/{self.proc.pid}/cmdline").read_text():
                return int(c[0])
        return self.proc.pid

    def metrics(self, by_resource: bool = False) -> dict[str, float]:
        """The operator's API requests by verb ("DELETE"), or by verb and resource ("DELETE pods")."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("necrocode_api_requests_total{"):
                key = line.split('verb="', 1)[1].split('"', 1)[0]
                if by_resource and 'resource="' in line:
                    key += " " + line.split('resource="', 1)[1].split('"', 1)[0]
                out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
        return out

    def gauge(self, name: str) -> float | None:
        """A label-free metric's value from the operator's /metrics (None: not exported)."""
        return self.gauges((name,)).get(name)

    def gauges(self, names: Sequence[str]) -> dict[str, float]:
        """Label-free metrics' values from one scrape of the operator's /metrics (those it does
        not export are left out)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in names:
                out[name] = float(value)
        return out

    def status(self) -> dict[str, int]:
        """The numbers of its /proc status: memory fields in kB, Threads (each can hold a malloc
        arena of its own) a count."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if v.split() and v.split()[0].isdigit():
                    out[k] = int(v.split()[0])
        return out

    def memory(self) -> dict[str, float]:
        """Its VmHWM, VmRSS, RssAnon and RssFile in MiB."""
        st = self.status()
        return {k: round(st[k] / 1024, 1) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile") if k in st}

    def connections(self) -> dict[str, int]:
        """Its open file descriptors, sockets among them, and its TCP connections (the socket
        inodes of its fds found in its network namespace's tcp tables; ESTABLISHED apart):
        what a leak of clients or watches would grow."""
        out = {"fds": 0, "sockets": 0, "tcp": 0, "tcp_established": 0}
        inodes: set[str] = set()
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{self.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    out["fds"] += 1
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        out["sockets"] = len(inodes)
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                    f = line.split()
                    if len(f) > 9 and f[9] in inodes:
                        out["tcp"] += 1
                        out["tcp_established"] += f[3] == "01"
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)  # py-spy writes its profile; kopf stops cleanly
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class RssSampler:
    """The operator's RSS sampled every `every` seconds over a window: its peak there (VmHWM is
    the peak over the process's whole life, which earlier measurements may have set)."""

    def __init__(self, op: Operator, every: float = 0.2):
        self.op, self.every = op, every
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.peak = self.op.memory().get("VmRSS", 0.0)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.op.memory().get("VmRSS", 0.0))
            await asyncio.sleep(self.every)

    async def stop(self) -> float:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, self.op.memory().get("VmRSS", 0.0))
        return self.peak


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, int]:
    return {k: int(b.get(k, 0) - a.get(k, 0)) for k in sorted(set(a) | set(b)) if b.get(k, 0) - a.get(k, 0)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class CpuMeter:
    """CPU seconds (user + system) of each control-plane process, the operator and this harness,
    so each figure says which component was busy: on a 2-core machine that is what bounds it."""

    def __init__(self, cluster: LocalCluster, op: Operator):
        self.cluster, self.op = cluster, op

    def _pids(self) -> dict[str, int]:
        pids = dict(self.cluster._pids())
        with contextlib.suppress(AssertionError):
            pids["operator"] = self.op.pid
        pids["harness"] = os.getpid()
        return pids

    def snap(self) -> dict[str, float]:
        out = {"_wall": time.perf_counter()}
        for name, pid in self._pids().items():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[name] = cpu_seconds(pid)
        return out

    def since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.snap()
        wall = now["_wall"] - before["_wall"]
        out = {k: round(now[k] - before.get(k, 0.0), 2) for k in sorted(now) if k != "_wall"}
        out["_wall_seconds"] = round(wall, 2)
        out["_busy_cores"] = round(sum(v for k, v in out.items() if not k.startswith("_")) / max(wall, 1e-6), 2)
        return out

