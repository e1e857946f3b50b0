#!/usr/bin/env python3
"""Cancellation at scale: necrocode-cancel side by side with what a user would otherwise pick,
in the same run, on a local control plane of its own (etcd + kube-apiserver +
kube-controller-manager + kube-scheduler + kwok, 10 kwok nodes).

    make bench [BENCH_ARGS="--sizes 100,1000 --reps 3"]
    .venv/bin/python benchmarks/run.py --help

Approaches, each timed from the request to the moment the work is observably done:

  ours            a JobCancellation, creation -> phase Completed (every runner gone, every
                  task Cancelled, every lease released; the operator's own Verify step checks)
  floor           a bare asyncio client making exactly the writes a cancellation promises (signal
                  PATCH + graceful DELETE per runner; once all are gone, task PUT + lease PUT),
                  100 in flight, nothing else: the floor under any operator keeping the promises
  raw-delete      a bare asyncio client: concurrent DELETEs of the same pods, until a watch has
                  seen every pod DELETED
  raw-collection  one DELETE collection (label selector), until every pod is DELETED
  kubectl         `kubectl delete pods -l necrocode.io/job=... --wait`
  job-controller  a batch/v1 Job with N pods, patched to `suspend: true`, until its pods are gone

plus the reaction latency of a TaskCancellation (creation -> first pod deletion seen by a
watch), 100 concurrent JobCancellations of 50 runners each, and the operator's peak RSS with
10,000 unrelated pods in the cluster.

Runner pods carry `necrocode.io/kwok-stop=immediate`: kwok removes them as soon as they are
deleted, so the figures measure the control path, not container shutdown. Results go to
benchmarks/results/<timestamp>/ (results.json, cancel-time.png, table.md, operator logs);
`--publish` also copies results.json and the plot to docs/benchmarks/.

Not part of the test suite: nothing here asserts; the goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "operator"))

import aiohttp  # noqa: E402

from localcluster import CACHE, LocalCluster, bin_dir, free_port  # noqa: E402
from necrocode.concurrency import bounded  # noqa: E402
from necrocode.kube import ApiError, Kube, NotFound, core_path, group_path, lease_path, load_credentials, nc_path  # noqa: E402

Obj = dict[str, Any]
NODES = 10
NS_PREFIX = "nb-"  # the operator serves nb-*
APPROACHES = ("ours", "floor", "raw-delete", "raw-collection", "kubectl", "job-controller")
TERMINAL = {"Completed", "PartiallyCompleted", "Failed", "Rejected"}
GRACE = 30


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


# ============================================================================ the world
class World:
    """Builds namespaces, jobs, tasks, leases and runner pods quickly (not measured)."""

    def __init__(self, kube: Kube, concurrency: int = 64):
        self.kube, self.concurrency = kube, concurrency

    async def namespace(self, tag: str) -> str:
        ns = f"{NS_PREFIX}{tag}-{uuid.uuid4().hex[:6]}"
        await self.kube.create(core_path(None, "namespaces"), {"metadata": {"name": ns}})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # pods need the default ServiceAccount
            try:
                await self.kube.get(core_path(ns, "serviceaccounts", "default"))
                return ns
            except NotFound:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"no default ServiceAccount in {ns}")

    async def drop_namespace(self, ns: str, wait: float = 180) -> None:
        with contextlib.suppress(NotFound):
            await self.kube.delete(core_path(None, "namespaces", ns), grace_period_seconds=0)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                await self.kube.get(core_path(None, "namespaces", ns))
            except NotFound:
                return
            await asyncio.sleep(0.5)
        say(f"  (namespace {ns} still terminating after {wait:.0f}s; going on)")

    async def retry(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        for attempt in range(8):
            try:
                return await fn()
            except ApiError as exc:
                if exc.status not in (0, 429, 500, 503, 504) or attempt == 7:
                    raise
                await asyncio.sleep(0.2 * 2 ** attempt)
        return None

    @staticmethod
    def pod(job: str, task: str, i: int, labels: dict[str, str] | None = None) -> Obj:
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job}-{task}-runner", "labels": labels or {
                "necrocode.io/job": job, "necrocode.io/task": task, "necrocode.io/role": "runner",
                "necrocode.io/kwok-stop": "immediate"}},
            "spec": {"nodeName": f"kwok-node-{i % NODES}", "terminationGracePeriodSeconds": GRACE,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "runner", "image": "necrocode/runner:bench"}]},
        }

    async def pods_only(self, ns: str, job: str, n: int) -> None:
        await bounded(range(n), lambda i: self.retry(
            lambda: self.kube.create(core_path(ns, "pods"), self.pod(job, f"t{i:05d}", i))), self.concurrency)

    async def job(self, ns: str, job: str, n: int) -> None:
        """An AgentJob (Running) with n Running tasks, each with a runner pod and a held lease."""
        await self.kube.create(nc_path(ns, "agentjobs"), {
            "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentJob", "metadata": {"name": job},
            "spec": {"dispatch": {"blocked": False}}})
        await self.kube.merge_patch(nc_path(ns, "agentjobs", job, "status"), {"status": {"phase": "Running"}})

        async def one(i: int) -> None:
            tid = f"t{i:05d}"
            pod = f"{job}-{tid}-runner"
            slot = f"{job}-slot-{i:05d}"
            await self.retry(lambda: self.kube.create(core_path(ns, "pods"), self.pod(job, tid, i)))
            await self.retry(lambda: self.kube.create(lease_path(ns), {
                "metadata": {"name": slot, "labels": {"necrocode.io/repo-pool": "bench", "necrocode.io/job": job,
                                                      "necrocode.io/task": tid}},
                "spec": {"holderIdentity": pod, "leaseDurationSeconds": 3600}}))
            name = f"{job}-{tid}"
            await self.retry(lambda: self.kube.create(nc_path(ns, "agenttasks"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
                "metadata": {"name": name, "labels": {"necrocode.io/job": job, "necrocode.io/task": tid}},
                "spec": {"job": job, "taskId": tid, "dependsOn": []}}))
            await self.retry(lambda: self.kube.merge_patch(nc_path(ns, "agenttasks", name, "status"), {
                "status": {"state": "Running", "runner": pod, "repoSlot": slot}}))

        await bounded(range(n), one, self.concurrency)

    async def wait_running(self, ns: str, selector: str, n: int, timeout: float = 600) -> None:  # noqa: ASYNC109
        """Until n pods match and none is not Running (cheap: a field-selected list of one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = await self.kube.list_page(core_path(ns, "pods"), label_selector=selector,
                                            field_selector="status.phase!=Running", limit=1)
            if not out.get("items"):
                total = await self.count(ns, selector)
                if total >= n:
                    return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"pods {selector} in {ns} not all Running after {timeout}s")

    async def count(self, ns: str, selector: str) -> int:
        n, cont = 0, None
        while True:
            out = await self.kube.list_page(core_path(ns, "pods"), label_selector=selector, limit=5000, continue_=cont)
            n += len(out.get("items") or [])
            cont = (out.get("metadata") or {}).get("continue")
            if not cont:
                return n


class GoneWatch:
    """A watch on pods (label selector) started before the clock starts; resolves when every
    name in `names` has been DELETED (or, with first=True, at the first deletion seen)."""

    def __init__(self, kube: Kube, ns: str, selector: str):
        self.kube, self.ns, self.selector = kube, ns, selector
        self.deleted: dict[str, float] = {}
        self.terminating: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> list[str]:
        items, rv = await self.kube.list_all(core_path(self.ns, "pods"), label_selector=self.selector, page=5000)
        self.task = asyncio.create_task(self._run(rv))
        return [p["metadata"]["name"] for p in items]

    async def _run(self, rv: str) -> None:
        while True:
            try:
                async for ev in self.kube.watch(core_path(self.ns, "pods"), label_selector=self.selector,
                                                resource_version=rv):
                    now = time.perf_counter()
                    meta = (ev.get("object") or {}).get("metadata") or {}
                    rv = meta.get("resourceVersion") or rv
                    name = str(meta.get("name"))
                    if ev.get("type") == "DELETED":
                        self.deleted.setdefault(name, now)
                        self.terminating.setdefault(name, now)
                        self.changed.set()
                    elif ev.get("type") == "MODIFIED" and meta.get("deletionTimestamp"):
                        self.terminating.setdefault(name, now)
                        self.changed.set()
            except ApiError as exc:
                say(f"  (pod watch broken: {exc}; resuming)")
                await asyncio.sleep(0.1)

    async def until(self, pred: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out waiting for pods to go")
            self.changed.clear()
            if pred():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def wait_phases(kube: Kube, ns: str, plural: str, names: set[str], timeout: float) -> dict[str, float]:  # noqa: ASYNC109
    """Watch cancellations in ns until each of `names` has a terminal phase; returns the time
    (perf_counter) each was seen terminal, and raises if any ends other than Completed."""
    seen: dict[str, float] = {}
    phases: dict[str, str] = {}
    path = nc_path(ns, plural)
    items, rv = await kube.list_all(path)
    for o in items:
        ph = (o.get("status") or {}).get("phase")
        if o["metadata"]["name"] in names and ph in TERMINAL:
            seen[o["metadata"]["name"]], phases[o["metadata"]["name"]] = time.perf_counter(), ph
    deadline = time.monotonic() + timeout
    while len(seen) < len(names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names) - len(seen)} {plural} not finished after {timeout}s")
        try:
            async for ev in kube.watch(path, resource_version=rv, timeout_seconds=int(max(1, deadline - time.monotonic()))):
                o = ev.get("object") or {}
                rv = (o.get("metadata") or {}).get("resourceVersion") or rv
                name = (o.get("metadata") or {}).get("name")
                ph = (o.get("status") or {}).get("phase")
                if name in names and name not in seen and ph in TERMINAL:
                    seen[name], phases[name] = time.perf_counter(), ph
                    if len(seen) == len(names):
                        break
        except ApiError as exc:
            if exc.status == 410:
                items, rv = await kube.list_all(path)
            await asyncio.sleep(0.05)
    bad = {n: p for n, p in phases.items() if p != "Completed"}
    if bad:
        raise RuntimeError(f"cancellations did not complete: {dict(list(bad.items())[:5])}")
    return seen


# ============================================================================ the operator
class Operator:
    def __init__(self, kubeconfig: Path, out: Path, env: dict[str, str] | None = None, tag: str = "operator"):
        self.kubeconfig, self.out, self.tag = kubeconfig, out, tag
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, profile: bool = False) -> None:
        env = {**os.environ, "NECROCODE_KUBECONFIG": str(self.kubeconfig), "KUBECONFIG": str(self.kubeconfig),
               "NECROCODE_METRICS_PORT": str(self.port), "NECROCODE_METRICS_ADDR": "127.0.0.1",
               "PYTHONPATH": str(REPO / "operator"), **self.env}
        cmd = [sys.executable, "-m", "necrocode.main", "--namespace", f"{NS_PREFIX}*", "--liveness", "",
               "--log-format", "json"]
        if profile:
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "200", "--format", "speedscope",
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

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("necrocode_api_requests_total{"):
                verb = line.split('verb="', 1)[1].split('"', 1)[0]
                out[verb] = float(line.rsplit(" ", 1)[1])
        return out

    def memory(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = round(int(v.split()[0]) / 1024, 1)  # MiB
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


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, int]:
    return {k: int(b.get(k, 0) - a.get(k, 0)) for k in sorted(set(a) | set(b)) if b.get(k, 0) - a.get(k, 0)}


class CpuMeter:
    """CPU seconds (user + system) of each control-plane process, the operator and this harness,
    so each figure says which component was busy: on a 2-core machine that is what bounds it."""

    def __init__(self, cluster: LocalCluster, op: Operator):
        self.cluster, self.op = cluster, op
        self.tick = os.sysconf("SC_CLK_TCK")

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
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        return out

    def since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.snap()
        wall = now["_wall"] - before["_wall"]
        out = {k: round(now[k] - before.get(k, 0.0), 2) for k in sorted(now) if k != "_wall"}
        out["_wall_seconds"] = round(wall, 2)
        out["_busy_cores"] = round(sum(v for k, v in out.items() if not k.startswith("_")) / max(wall, 1e-6), 2)
        return out


# ============================================================================ the approaches
@dataclass
class Bench:
    kube: Kube
    world: World
    op: Operator
    kubectl: Path
    kubeconfig: Path
    raw_concurrency: int = 100
    meter: CpuMeter | None = None
    results: dict[str, Any] = field(default_factory=dict)
    pprof_seconds: int = 0
    out: Path | None = None

    def pprof(self, tag: str) -> asyncio.Task[None] | None:
        """With --apiserver-pprof S: the API server's CPU profile over the first S seconds of a
        timed window, saved as <out>/<tag>-rep<i>.pprof (`go tool pprof -top` reads it)."""
        if not self.pprof_seconds or self.out is None:
            return None
        path = self.out / f"{tag}-rep{len(list(self.out.glob(f'{tag}-rep*.pprof')))}.pprof"

        async def fetch() -> None:
            session = self.kube.session
            async with session.get(self.kube.creds.host + "/debug/pprof/profile",
                                   params={"seconds": str(self.pprof_seconds)}, headers=self.kube.creds.headers(),
                                   timeout=aiohttp.ClientTimeout(total=self.pprof_seconds + 60)) as r:
                path.write_bytes(await r.read())
        return asyncio.create_task(fetch())

    def cpu_start(self) -> dict[str, float]:
        return self.meter.snap() if self.meter else {}

    def cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        return self.meter.since(before) if self.meter and before else {}

    # ---------------------------------------------------------------- ours
    async def ours(self, n: int) -> Obj:
        ns = await self.world.namespace("ours")
        try:
            await self.world.job(ns, "job", n)
            await self.world.wait_running(ns, "necrocode.io/job=job", n)
            await asyncio.sleep(1.0)  # let kwok's status writes settle
            before = self.op.metrics()
            cpu = self.cpu_start()
            t0 = time.perf_counter()
            prof = self.pprof(f"ours-{n}")
            await self.kube.create(nc_path(ns, "jobcancellations"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation", "metadata": {"name": "stop"},
                "spec": {"jobName": "job", "reason": "benchmark"}})
            done = await wait_phases(self.kube, ns, "jobcancellations", {"stop"}, timeout=900)
            seconds = done["stop"] - t0
            cpu_used = self.cpu_since(cpu)
            if prof:
                await prof
            calls = delta(before, self.op.metrics())
            jc = await self.kube.get(nc_path(ns, "jobcancellations", "stop"))
            left = await self.world.count(ns, "necrocode.io/job=job")
            leases, _ = await self.kube.list_all(lease_path(ns), label_selector="necrocode.io/job=job")
            held = [x for x in leases if (x.get("spec") or {}).get("holderIdentity")]
            st = jc.get("status") or {}
            steps = {s["name"]: _step_seconds(s) for s in st.get("steps", [])}
            assert left == 0 and not held, (left, len(held))
            return {"seconds": seconds, "api_calls": calls, "api_calls_total": sum(calls.values()),
                    "cpu_seconds": cpu_used, "steps": steps, "progress": st.get("progress"), "pods_left": left,
                    "leases_held": len(held)}
        finally:
            await self.world.drop_namespace(ns)

    # ---------------------------------------------------------------- raw client
    async def _armed(self, ns: str, n: int, *, full_world: bool) -> tuple[GoneWatch, list[str], Kube]:
        """n Running runner pods (with their job, tasks and leases when `full_world`), a watch
        following them, and a bare client of raw_concurrency connections: ready to time."""
        if full_world:
            await self.world.job(ns, "job", n)
        else:
            await self.world.pods_only(ns, "job", n)
        await self.world.wait_running(ns, "necrocode.io/job=job", n)
        await asyncio.sleep(1.0)
        watch = GoneWatch(self.kube, ns, "necrocode.io/job=job")
        names = await watch.start()
        return watch, names, Kube(self.kube.creds, concurrency=self.raw_concurrency, timeout=120)

    async def raw(self, n: int, collection: bool) -> Obj:
        ns = await self.world.namespace("raw")
        sel = "necrocode.io/job=job"
        try:
            watch, names, client = await self._armed(ns, n, full_world=False)
            try:
                cpu = self.cpu_start()
                t0 = time.perf_counter()
                if collection:
                    await client.request("DELETE", core_path(ns, "pods"), params={"labelSelector": sel},
                                         body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": GRACE})
                else:
                    await bounded(names, lambda p: client.delete(core_path(ns, "pods", p), grace_period_seconds=GRACE,
                                                                 propagation=None), self.raw_concurrency)
                t_issued = time.perf_counter() - t0
                await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
                seconds = max(watch.deleted.values()) - t0
                cpu_used = self.cpu_since(cpu)
            finally:
                await watch.stop()
                await client.close()
            return {"seconds": seconds, "requests_issued_seconds": t_issued, "cpu_seconds": cpu_used,
                    "api_calls_total": 1 if collection else len(names)}
        finally:
            await self.world.drop_namespace(ns)

    # ---------------------------------------------------------------- the promised writes, bare
    async def promised(self, n: int) -> Obj:
        """The floor under any operator that keeps the issue's promises: a bare client (no status,
        no Events, no checks) making exactly the writes a cancellation must make, 100 in flight:
        per runner the signal annotation PATCH and the graceful DELETE; once every pod is gone,
        per task its Cancelled status PUT and per lease its release PUT (both on listed objects)."""
        ns = await self.world.namespace("floor")
        sel = "necrocode.io/job=job"
        try:
            watch, names, client = await self._armed(ns, n, full_world=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            signal = {"metadata": {"annotations": {"necrocode.io/cancel-requested": json.dumps(
                {"reason": "benchmark", "requestedAt": stamp, "cancellation": "floor"})}}}

            async def stop(pod: str) -> None:
                await client.merge_patch(core_path(ns, "pods", pod), signal, meta_only=True)
                await client.delete(core_path(ns, "pods", pod), grace_period_seconds=GRACE, propagation=None,
                                    meta_only=True)

            def cancel_task(t: Obj) -> Awaitable[Any]:
                t["status"] = {**(t.get("status") or {}), "state": "Cancelled", "cancellation": {
                    "reason": "benchmark", "requestedBy": "bench", "cancelledAt": stamp, "cancelledBy": "floor"}}
                return client.request("PUT", nc_path(ns, "agenttasks", t["metadata"]["name"], "status"), body=t)

            def release(x: Obj) -> Awaitable[Any]:
                labels = {k: v for k, v in (x["metadata"].get("labels") or {}).items()
                          if k not in ("necrocode.io/job", "necrocode.io/task")}
                x["metadata"]["labels"] = {**labels, "necrocode.io/slot-state": "dirty"}
                x["spec"] = {k: v for k, v in x["spec"].items() if k != "holderIdentity"}
                return client.request("PUT", lease_path(ns, x["metadata"]["name"]), body=x)

            try:
                cpu = self.cpu_start()
                t0 = time.perf_counter()
                prof = self.pprof(f"floor-{n}")
                await bounded(names, stop, self.raw_concurrency)
                await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
                gone = max(watch.deleted.values()) - t0
                tasks, _ = await client.list_all(nc_path(ns, "agenttasks"), label_selector=sel)
                leases, _ = await client.list_all(lease_path(ns), label_selector=sel)
                await asyncio.gather(bounded(tasks, cancel_task, self.raw_concurrency // 2),
                                     bounded(leases, release, self.raw_concurrency // 2))
                seconds = time.perf_counter() - t0
                cpu_used = self.cpu_since(cpu)
                if prof:
                    await prof
            finally:
                await watch.stop()
                await client.close()
            return {"seconds": seconds, "pods_gone_seconds": gone, "cpu_seconds": cpu_used,
                    "api_calls_total": 2 * len(names) + len(tasks) + len(leases) + 2}
        finally:
            await self.world.drop_namespace(ns)

    # ---------------------------------------------------------------- kubectl
    async def kubectl_delete(self, n: int) -> Obj:
        ns = await self.world.namespace("kubectl")
        sel = "necrocode.io/job=job"
        try:
            await self.world.pods_only(ns, "job", n)
            await self.world.wait_running(ns, sel, n)
            await asyncio.sleep(1.0)
            cmd = [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), "-n", ns, "delete", "pods", "-l", sel,
                   "--wait"]
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"kubectl failed: {err.decode()[-500:]}")
            left = await self.world.count(ns, sel)
            return {"seconds": seconds, "pods_left": left}
        finally:
            await self.world.drop_namespace(ns)

    # ---------------------------------------------------------------- the Job controller
    async def job_controller(self, n: int) -> Obj:
        ns = await self.world.namespace("jobctl")
        sel = "batch.kubernetes.io/job-name=work"
        try:
            await self.kube.create(group_path("batch", "v1", ns, "jobs"), {
                "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "work"},
                "spec": {"parallelism": n, "completions": n, "backoffLimit": 0,
                         "template": {"metadata": {"labels": {"necrocode.io/kwok-stop": "immediate"}},
                                      "spec": {"restartPolicy": "Never", "nodeSelector": {"type": "kwok"},
                                               "terminationGracePeriodSeconds": GRACE,
                                               "automountServiceAccountToken": False,
                                               "containers": [{"name": "w", "image": "necrocode/runner:bench"}]}}}})
            t_setup = time.perf_counter()
            await self.world.wait_running(ns, sel, n, timeout=900)
            setup = time.perf_counter() - t_setup
            await asyncio.sleep(1.0)
            watch = GoneWatch(self.kube, ns, sel)
            names = await watch.start()
            try:
                cpu = self.cpu_start()
                t0 = time.perf_counter()
                prof = self.pprof(f"job-controller-{n}")
                await self.kube.merge_patch(group_path("batch", "v1", ns, "jobs", "work"), {"spec": {"suspend": True}})
                await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
                seconds = max(watch.deleted.values()) - t0
                cpu_used = self.cpu_since(cpu)
                if prof:
                    await prof
                first = min(watch.terminating.values()) - t0
            finally:
                await watch.stop()
            return {"seconds": seconds, "first_deletion_seconds": first, "pods": len(names), "setup_seconds": setup,
                    "cpu_seconds": cpu_used}
        finally:
            await self.world.drop_namespace(ns)

    # ---------------------------------------------------------------- reaction latency
    async def reaction(self, reps: int, running: int = 20) -> Obj:
        ns = await self.world.namespace("react")
        lat: list[float] = []
        before = self.op.metrics()
        try:
            jobs = -(-reps // running)
            for j in range(jobs):
                await self.world.job(ns, f"r{j}", running)
            await self.world.wait_running(ns, "necrocode.io/role=runner", jobs * running)
            await asyncio.sleep(1.0)
            watch = GoneWatch(self.kube, ns, "necrocode.io/role=runner")
            await watch.start()
            try:
                for i in range(reps):
                    job, tid = f"r{i // running}", f"t{i % running:05d}"
                    pod = f"{job}-{tid}-runner"
                    name = f"c{i:03d}"
                    t0 = time.perf_counter()
                    await self.kube.create(nc_path(ns, "taskcancellations"), {
                        "apiVersion": "necrocode.io/v1alpha1", "kind": "TaskCancellation", "metadata": {"name": name},
                        "spec": {"jobName": job, "taskId": tid, "cascade": False, "reason": "benchmark"}})
                    await watch.until(functools.partial(watch.terminating.__contains__, pod), timeout=60)
                    lat.append(watch.terminating[pod] - t0)
                    await wait_phases(self.kube, ns, "taskcancellations", {name}, timeout=60)
                    await asyncio.sleep(0.2)
            finally:
                await watch.stop()
            calls = delta(before, self.op.metrics())
            return {"samples_seconds": lat, "p50_seconds": percentile(lat, 50), "p99_seconds": percentile(lat, 99),
                    "max_seconds": max(lat), "reps": reps, "api_calls_per_cancellation":
                    round(sum(calls.values()) / max(1, reps), 1)}
        finally:
            await self.world.drop_namespace(ns)

    # ---------------------------------------------------------------- what one write costs
    async def write_costs(self, n: int, concurrency: int = 50) -> Obj:
        """CPU per API call of each kind a cancellation makes, n calls of each at `concurrency`
        in flight, on a world like the one a cancellation sees: what bounds us, measured."""
        ns = await self.world.namespace("costs")
        out: Obj = {}
        try:
            await self.world.job(ns, "job", n)
            await self.world.wait_running(ns, "necrocode.io/job=job", n)
            await asyncio.sleep(2.0)
            tids = [f"t{i:05d}" for i in range(n)]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

            def event(t: str) -> Obj:
                return {"metadata": {"name": f"job-{t}.cost"}, "type": "Normal", "reason": "Cancelled",
                        "message": "Cancelled by jobcancellation/stop: benchmark", "firstTimestamp": stamp,
                        "lastTimestamp": stamp, "count": 1, "source": {"component": "necrocode-cancel"},
                        "involvedObject": {"apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
                                           "namespace": ns, "name": f"job-{t}"}}

            ops: dict[str, Callable[[str], Awaitable[Any]]] = {
                "pod annotation PATCH (signal)": lambda t: self.kube.merge_patch(
                    core_path(ns, "pods", f"job-{t}-runner"),
                    {"metadata": {"annotations": {"necrocode.io/cancel-requested": '{"reason":"benchmark"}'}}}),
                "AgentTask status PATCH": lambda t: self.kube.merge_patch(
                    nc_path(ns, "agenttasks", f"job-{t}", "status"),
                    {"status": {"state": "Cancelled", "cancellation": {"reason": "benchmark", "cancelledBy": "stop"}}}),
                "Lease PATCH (release)": lambda t: self.kube.merge_patch(
                    lease_path(ns, f"job-slot-{t[1:]}"),
                    {"metadata": {"labels": {"necrocode.io/job": None, "necrocode.io/task": None,
                                             "necrocode.io/slot-state": "dirty"}}, "spec": {"holderIdentity": None}}),
                "Event POST": lambda t: self.kube.create(core_path(ns, "events"), event(t)),
            }
            tasks = {t["metadata"]["name"]: t for t in (await self.kube.list_all(
                nc_path(ns, "agenttasks"), label_selector="necrocode.io/job=job"))[0]}
            leases = {x["metadata"]["name"]: x for x in (await self.kube.list_all(
                lease_path(ns), label_selector="necrocode.io/job=job"))[0]}

            def put_task(t: str) -> Awaitable[Any]:
                obj = tasks[f"job-{t}"]
                obj["status"] = {**(obj.get("status") or {}), "state": "Failed"}
                return self.kube.request("PUT", nc_path(ns, "agenttasks", f"job-{t}", "status"), body=obj)

            def put_lease(t: str) -> Awaitable[Any]:
                obj = leases[f"job-slot-{t[1:]}"]
                obj["spec"] = {**obj["spec"], "holderIdentity": "x"}
                return self.kube.request("PUT", lease_path(ns, f"job-slot-{t[1:]}"), body=obj)

            ops = {"AgentTask status PUT": put_task, "Lease PUT": put_lease, **ops}  # first: on the listed versions
            for label, op in ops.items():
                cpu = self.cpu_start()
                t0 = time.perf_counter()
                await bounded(tids, op, concurrency)
                out[label] = self._cost(n, time.perf_counter() - t0, self.cpu_since(cpu))
            watch = GoneWatch(self.kube, ns, "necrocode.io/job=job")
            names = await watch.start()
            try:
                cpu = self.cpu_start()
                t0 = time.perf_counter()
                await bounded(names, lambda p: self.kube.delete(core_path(ns, "pods", p), grace_period_seconds=GRACE,
                                                                propagation=None), concurrency)
                await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
                out["pod DELETE (+ kwok's final delete)"] = self._cost(
                    n, max(watch.deleted.values()) - t0, self.cpu_since(cpu))
            finally:
                await watch.stop()
            return out
        finally:
            await self.world.drop_namespace(ns)

    @staticmethod
    def _cost(n: int, seconds: float, cpu: Obj) -> Obj:
        per = {k: round(v * 1000 / n, 2) for k, v in cpu.items() if not k.startswith("_") and v}
        total = sum(v for k, v in cpu.items() if not k.startswith("_"))
        return {"calls": n, "seconds": round(seconds, 2), "calls_per_second": round(n / seconds, 1),
                "cpu_ms_per_call": per, "cpu_ms_per_call_total": round(total * 1000 / n, 2)}

    # ---------------------------------------------------------------- many at once
    async def concurrent(self, jobs: int = 100, per_job: int = 50) -> Obj:
        ns = await self.world.namespace("many")
        try:
            await asyncio.gather(*(self.world.job(ns, f"j{j:03d}", per_job) for j in range(jobs)))
            await self.world.wait_running(ns, "necrocode.io/role=runner", jobs * per_job)
            await asyncio.sleep(1.0)
            before = self.op.metrics()
            names = {f"stop-j{j:03d}" for j in range(jobs)}
            t0 = time.perf_counter()
            await bounded(range(jobs), lambda j: self.kube.create(nc_path(ns, "jobcancellations"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation", "metadata": {"name": f"stop-j{j:03d}"},
                "spec": {"jobName": f"j{j:03d}", "reason": "benchmark"}}), 50)
            done = await wait_phases(self.kube, ns, "jobcancellations", names, timeout=900)
            seconds = max(done.values()) - t0
            calls = delta(before, self.op.metrics())
            left = await self.world.count(ns, "necrocode.io/role=runner")
            assert left == 0, left
            return {"seconds": seconds, "first_completed_seconds": min(done.values()) - t0,
                    "median_completed_seconds": median([v - t0 for v in done.values()]),
                    "api_calls": calls, "api_calls_total": sum(calls.values())}
        finally:
            await self.world.drop_namespace(ns)


def _step_seconds(step: Obj) -> float | None:
    from necrocode.model import parse_time
    a, b = parse_time(step.get("startedAt")), parse_time(step.get("finishedAt"))
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


# ============================================================================ RSS
async def rss(kube: Kube, world: World, kubeconfig: Path, out: Path, pods: int = 10_000) -> Obj:
    """A fresh operator, 10,000 unrelated pods in a namespace it serves, one small cancellation;
    its peak RSS (VmHWM)."""
    op = Operator(kubeconfig, out, tag="operator-rss")
    op.start()
    ns = await world.namespace("rss")
    try:
        idle = op.memory()
        lab = {"app": "unrelated", "necrocode.io/kwok-stop": "immediate"}
        await bounded(range(pods), lambda i: world.retry(lambda: kube.create(
            core_path(ns, "pods"), {**World.pod("x", f"u{i:05d}", i, labels=lab),
                                    "metadata": {"name": f"unrelated-{i:05d}", "labels": lab}})), 64)
        await world.wait_running(ns, "app=unrelated", pods)
        await world.job(ns, "job", 50)
        await world.wait_running(ns, "necrocode.io/job=job", 50)
        await kube.create(nc_path(ns, "jobcancellations"), {
            "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation", "metadata": {"name": "stop"},
            "spec": {"jobName": "job"}})
        await wait_phases(kube, ns, "jobcancellations", {"stop"}, timeout=300)
        await asyncio.sleep(2.0)
        mem = op.memory()
        return {"unrelated_pods": pods, "idle_rss_mib": idle.get("VmRSS"), "rss_mib": mem.get("VmRSS"),
                "peak_rss_mib": mem.get("VmHWM")}
    finally:
        op.stop()
        await world.drop_namespace(ns, wait=300)


# ============================================================================ output
LABELS = {"ours": "necrocode-cancel (JobCancellation)",
          "floor": "floor: the promised writes, bare client", "raw-delete": "raw: concurrent DELETEs",
          "raw-collection": "raw: DELETE collection", "kubectl": "kubectl delete -l --wait",
          "job-controller": "Job controller (suspend)"}


def summarise(results: Obj) -> None:
    for n, per in results["sizes"].items():
        for name, a in per.items():
            secs = [r["seconds"] for r in a["runs"]]
            if not secs:
                continue
            a["median_seconds"] = median(secs)
            a["min_seconds"], a["max_seconds"] = min(secs), max(secs)
            if name == "ours":
                a["median_api_calls"] = median([r["api_calls_total"] for r in a["runs"]])
        raws = [per[k]["median_seconds"] for k in ("raw-delete", "raw-collection") if per.get(k, {}).get("median_seconds")]
        if raws:
            per_limit = min(raws)
            results["raw_limit"][n] = per_limit
            if "median_seconds" in per.get("ours", {}):
                per["ours"]["ratio_to_raw_limit"] = round(per["ours"]["median_seconds"] / per_limit, 2)
        if "median_seconds" in per.get("ours", {}) and "median_seconds" in per.get("floor", {}):
            per["ours"]["ratio_to_floor"] = round(per["ours"]["median_seconds"] / per["floor"]["median_seconds"], 2)


def table(results: Obj) -> str:
    sizes = list(results["sizes"])
    lines = ["| approach | " + " | ".join(f"N = {int(n):,}" for n in sizes) + " |",
             "| --- | " + " | ".join("---:" for _ in sizes) + " |"]
    for name in APPROACHES:
        cells = []
        for n in sizes:
            a = results["sizes"][n].get(name)
            if not a or "median_seconds" not in a:
                cells.append("-")
                continue
            c = f"{a['median_seconds']:.2f} s"
            if name == "ours" and "ratio_to_raw_limit" in a:
                c += f" ({a['ratio_to_raw_limit']:.2f}x raw limit, {int(a['median_api_calls']):,} calls)"
            if name == "ours" and "ratio_to_floor" in a:
                c += f" ({a['ratio_to_floor']:.2f}x floor)"
            cells.append(c)
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: Obj, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted(int(n) for n in results["sizes"])
    for name in APPROACHES:
        xs, ys, lo, hi = [], [], [], []
        for n in sizes:
            a = results["sizes"][str(n)].get(name)
            if a and "median_seconds" in a:
                xs.append(n)
                ys.append(a["median_seconds"])
                lo.append(a["median_seconds"] - a["min_seconds"])
                hi.append(a["max_seconds"] - a["median_seconds"])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[name],
                        linewidth=2.5 if name == "ours" else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("runner pods (N)")
    ax.set_ylabel("seconds until every pod is gone (median, min-max)")
    ax.set_title("Cancelling N runner pods, local control plane + kwok")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


# ============================================================================ main
async def amain(a: argparse.Namespace, out: Path, cluster: LocalCluster, kubeconfig: Path) -> Obj:
    creds = load_credentials(str(kubeconfig))
    kube = Kube(creds, concurrency=100, timeout=120)
    world = World(kube)
    results: Obj = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                    "settings": {"reps": a.reps, "sizes": a.sizes, "reaction_reps": a.reaction_reps,
                                 "operator_concurrency": os.environ.get("NECROCODE_CONCURRENCY", "50"),
                                 "raw_client_concurrency": a.raw_concurrency, "grace_period_seconds": GRACE,
                                 "kwok_nodes": NODES, "kubectl_max_n": a.kubectl_max_n,
                                 "raw_delete_max_n": a.raw_delete_max_n,
                                 "kube_controller_manager": "--kube-api-qps=100 --kube-api-burst=200",
                                 "kube_apiserver": "--max-requests-inflight=800 --max-mutating-requests-inflight=400"},
                    "sizes": {}, "raw_limit": {}}
    op = Operator(kubeconfig, out, tag="operator")
    op.start(profile=a.profile)
    bench = Bench(kube, world, op, a.kubectl, kubeconfig, raw_concurrency=a.raw_concurrency,
                  meter=CpuMeter(cluster, op), pprof_seconds=a.apiserver_pprof, out=out)
    runners: dict[str, Callable[[int], Awaitable[Obj]]] = {
        "ours": bench.ours, "raw-delete": lambda n: bench.raw(n, False),
        "raw-collection": lambda n: bench.raw(n, True), "kubectl": bench.kubectl_delete, "floor": bench.promised,
        "job-controller": bench.job_controller}
    try:
        for n in a.sizes:
            per: Obj = results["sizes"].setdefault(str(n), {})
            for rep in range(a.reps):
                for name in a.approaches:  # interleaved, so drift in the machine's load hits all alike
                    if (name == "kubectl" and n > a.kubectl_max_n) or (name == "raw-delete" and n > a.raw_delete_max_n):
                        continue
                    started = time.monotonic()
                    try:
                        r = await runners[name](n)
                    except Exception as exc:  # recorded and reported, and the run goes on
                        per.setdefault(name, {"runs": []}).setdefault("failed_runs", []).append(repr(exc)[:1000])
                        say(f"N={n:>5} rep {rep + 1}/{a.reps} {name:<15} FAILED: {exc!r}"[:400])
                        continue
                    per.setdefault(name, {"runs": []})["runs"].append(r)
                    say(f"N={n:>5} rep {rep + 1}/{a.reps} {name:<15} {r['seconds']:8.3f} s"
                        + (f"  ({r['api_calls_total']} operator API calls)" if name == "ours" else "")
                        + f"  [{time.monotonic() - started:.0f}s with setup]")
                    if r.get("cpu_seconds"):
                        c = r["cpu_seconds"]
                        top = sorted(((v, k) for k, v in c.items() if not k.startswith("_")), reverse=True)[:4]
                        say(f"      cpu: {c['_busy_cores']} cores busy; " + ", ".join(f"{k} {v:.1f}s" for v, k in top))
            summarise(results)
            _write(results, out)
        if a.write_costs:
            say(f"write costs: {a.write_costs} calls of each kind")
            results["write_costs"] = await bench.write_costs(a.write_costs)
            for label, c in results["write_costs"].items():
                say(f"  {label:<38} {c['calls_per_second']:7.1f}/s  {c['cpu_ms_per_call_total']:6.2f} ms CPU/call "
                    f"(apiserver {c['cpu_ms_per_call'].get('kube-apiserver', 0):.2f}, "
                    f"etcd {c['cpu_ms_per_call'].get('etcd', 0):.2f}, kwok {c['cpu_ms_per_call'].get('kwok', 0):.2f})")
            _write(results, out)
        if a.reaction_reps:
            say(f"reaction latency: {a.reaction_reps} TaskCancellations")
            results["reaction"] = await bench.reaction(a.reaction_reps)
            r = results["reaction"]
            say(f"  p50 {r['p50_seconds'] * 1000:.0f} ms, p99 {r['p99_seconds'] * 1000:.0f} ms")
            _write(results, out)
        if a.concurrent_reps:
            runs = []
            failed: list[str] = []
            for rep in range(a.concurrent_reps):
                try:
                    r = await bench.concurrent(a.concurrent_jobs, a.concurrent_runners)
                except Exception as exc:
                    failed.append(repr(exc)[:1000])
                    say(f"concurrent rep {rep + 1} FAILED: {exc!r}"[:400])
                    continue
                runs.append(r)
                say(f"{a.concurrent_jobs} concurrent JobCancellations x {a.concurrent_runners} runners, "
                    f"rep {rep + 1}: {r['seconds']:.2f} s ({r['api_calls_total']} calls)")
            results["concurrent"] = {"jobs": a.concurrent_jobs, "runners_per_job": a.concurrent_runners, "runs": runs,
                                     "failed_runs": failed, "median_seconds": median([r["seconds"] for r in runs])}
            _write(results, out)
        results["operator_memory_after_all_mib"] = op.memory()
    finally:
        op.stop()
    if a.rss_pods:
        say(f"RSS: a fresh operator with {a.rss_pods} unrelated pods")
        results["rss"] = await rss(kube, world, kubeconfig, out, a.rss_pods)
        say(f"  peak RSS {results['rss']['peak_rss_mib']} MiB")
    await kube.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summarise(results)
    results["goals"] = goals(results)
    _write(results, out)
    return results


def goals(results: Obj) -> Obj:
    g: Obj = {}
    for n in ("1000", "5000"):
        o = results["sizes"].get(n, {}).get("ours", {})
        if "ratio_to_raw_limit" in o:
            g[f"within_1.3x_raw_limit_N{n}"] = {"ratio": o["ratio_to_raw_limit"], "met": o["ratio_to_raw_limit"] <= 1.3}
    for n, per in results["sizes"].items():
        if "median_seconds" in per.get("ours", {}):
            others = {k: per[k]["median_seconds"] for k in ("kubectl", "job-controller") if "median_seconds" in per.get(k, {})}
            g[f"faster_than_kubectl_and_job_controller_N{n}"] = {
                "met": all(per["ours"]["median_seconds"] < v for v in others.values()), **others,
                "ours": per["ours"]["median_seconds"]}
    for n, per in results["sizes"].items():  # the bound: what the promised writes alone cost
        fl = per.get("floor", {}).get("median_seconds")
        if fl:
            b: Obj = {"floor": fl}
            if "median_seconds" in per.get("ours", {}):
                b["ours_to_floor"] = round(per["ours"]["median_seconds"] / fl, 2)
            if results["raw_limit"].get(n):
                b["floor_to_raw_limit"] = round(fl / results["raw_limit"][n], 2)
            if "median_seconds" in per.get("job-controller", {}):
                b["floor_to_job_controller"] = round(fl / per["job-controller"]["median_seconds"], 2)
            g[f"floor_bound_N{n}"] = b
    if "reaction" in results:
        p99 = results["reaction"]["p99_seconds"]
        g["reaction_p99_under_200ms"] = {"p99_seconds": p99, "met": p99 < 0.2}
    if "rss" in results:
        g["rss_under_150MB"] = {"peak_rss_mib": results["rss"]["peak_rss_mib"],
                                "met": results["rss"]["peak_rss_mib"] * 1.048576 < 150}
    return g


def _write(results: Obj, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False))
    if results["sizes"]:
        (out / "table.md").write_text(table(results))


def machine() -> Obj:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    versions: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (REPO / "hack" / "versions.env").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                versions[k.strip()] = v.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "host": socket.gethostname(), "versions": versions,
            "loadavg_at_start": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000", help="runner pods per job (comma-separated)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each approach at each size (median)")
    ap.add_argument("--approaches", default=",".join(APPROACHES), help=f"subset of {','.join(APPROACHES)}")
    ap.add_argument("--reaction-reps", type=int, default=30, help="TaskCancellations for reaction latency (0: skip)")
    ap.add_argument("--concurrent-reps", type=int, default=3, help="repetitions of the many-at-once run (0: skip)")
    ap.add_argument("--concurrent-jobs", type=int, default=100)
    ap.add_argument("--concurrent-runners", type=int, default=50)
    ap.add_argument("--rss-pods", type=int, default=10_000, help="unrelated pods for the RSS run (0: skip)")
    ap.add_argument("--kubectl-max-n", type=int, default=1000,
                    help="run kubectl only up to this N (it deletes and waits one pod at a time: ~0.2 s a pod here)")
    ap.add_argument("--raw-delete-max-n", type=int, default=1_000_000,
                    help="skip raw-delete above this N (it takes as long as the DELETE collection; "
                         "at 5,000 it was 4 %% faster, so the published raw limit measures both)")
    ap.add_argument("--raw-concurrency", type=int, default=100, help="requests in flight for raw-delete")
    ap.add_argument("--apiserver-pprof", type=int, default=0, metavar="SECONDS",
                    help="save the API server's CPU profile over the first SECONDS of each timed window "
                         "(ours, floor, job-controller) as <out>/<approach>-<N>-rep<i>.pprof")
    ap.add_argument("--write-costs", type=int, default=0,
                    help="also measure the CPU cost of each kind of API call a cancellation makes (n of each)")
    ap.add_argument("--profile", action="store_true", help="run the operator under py-spy (speedscope output)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results/<time>)")
    ap.add_argument("--publish", action="store_true", help="also copy results.json and the plot to docs/benchmarks/")
    ap.add_argument("--cluster-dir", type=Path, default=CACHE / "bench-cluster")
    ap.add_argument("--kubectl", type=Path, default=CACHE / "bin" / "kubectl")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    a.approaches = [s for s in a.approaches.split(",") if s]
    unknown = set(a.approaches) - set(APPROACHES)
    if unknown:
        ap.error(f"unknown approaches: {', '.join(sorted(unknown))}")
    if a.cluster_dir.resolve() == (CACHE / "cluster").resolve():
        ap.error("refusing to use the shared development cluster; pick another --cluster-dir")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        ap.error("matplotlib is missing: .venv/bin/pip install -e '.[dev,bench]'")
    if a.profile and not (Path(sys.executable).parent / "py-spy").exists():
        ap.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = a.out or REPO / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    say(f"starting a local control plane in {a.cluster_dir} ({NODES} kwok nodes) ...")
    cluster = LocalCluster(dir=a.cluster_dir, nodes=NODES, tie_to_parent=True, bins=bin_dir(),
                           profiling=a.apiserver_pprof > 0)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        kubeconfig = cluster.up()
        from kube_helpers import Kubectl
        Kubectl(kubeconfig).install_crds()
        say(f"control plane up in {time.monotonic() - started:.0f}s; results in {out}")
        results = asyncio.run(amain(a, out, cluster, kubeconfig))
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    finally:
        cluster.down()
    if results["sizes"]:
        plot(results, out / "cancel-time.png")
    say(f"done in {time.monotonic() - started:.0f}s\n" + (table(results) if results["sizes"] else ""))
    say("goals: " + json.dumps(results["goals"], indent=1))
    if a.publish:
        dest = REPO / "docs" / "benchmarks"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "results.json", dest / "results.json")
        if (out / "cancel-time.png").exists():
            shutil.copy(out / "cancel-time.png", dest / "cancel-time.png")
        say(f"published to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
