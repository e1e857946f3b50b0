"""What only the operator is measured on: the reaction latency of a TaskCancellation and its
peak RSS beside 10,000 unrelated pods (many at once: many.py; the leak check: leak.py)."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

from benchmarks.cluster import Operator, delta
from benchmarks.common import Obj, percentile
from benchmarks.harness import Harness
from benchmarks.world import GoneWatch, World, wait_phases
from necrocode.concurrency import bounded
from necrocode.kube import Kube, core_path, nc_path


async def reaction(h: Harness, reps: int, running: int = 20) -> Obj:
    """Reaction latency: TaskCancellations one after the other, each timed from its creation to
    the first sign of its runner's deletion seen by a watch."""
    ns = await h.world.namespace("react")
    lat: list[float] = []
    before = h.op.metrics()
    try:
        jobs = -(-reps // running)
        for j in range(jobs):
            await h.world.job(ns, f"r{j}", running)
        await h.world.wait_running(ns, "necrocode.io/role=runner", jobs * running)
        await asyncio.sleep(1.0)
        watch = GoneWatch(h.kube, ns, "necrocode.io/role=runner")
        await watch.start()
        try:
            for i in range(reps):
                job, tid = f"r{i // running}", f"t{i % running:05d}"
                pod = f"{job}-{tid}-runner"
                name = f"c{i:03d}"
                t0 = time.perf_counter()
                await h.kube.create(nc_path(ns, "taskcancellations"), {
                    "apiVersion": "necrocode.io/v1alpha1", "kind": "TaskCancellation", "metadata": {"name": name},
                    "spec": {"jobName": job, "taskId": tid, "cascade": False, "reason": "benchmark"}})
                await watch.until(functools.partial(watch.terminating.__contains__, pod), timeout=60)
                lat.append(watch.terminating[pod] - t0)
                await wait_phases(h.kube, ns, "taskcancellations", {name}, timeout=60)
                await asyncio.sleep(0.2)
        finally:
            await watch.stop()
        calls = delta(before, h.op.metrics())
        return {"samples_seconds": lat, "p50_seconds": percentile(lat, 50), "p99_seconds": percentile(lat, 99),
                "max_seconds": max(lat), "reps": reps, "api_calls_per_cancellation":
                round(sum(calls.values()) / max(1, reps), 1)}
    finally:
        await h.world.drop_namespace(ns)


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
