"""Leak check (issue 19, item 5): a fresh operator's RSS and open connections before and after
many small cancellations made one after the other; what grows with the number of
cancellations served (a client, a watch, a task or a record kept per cancellation) shows here
long before it would take an operator down in production."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from benchmarks.cluster import Operator
from benchmarks.common import Obj, say
from benchmarks.world import World, wait_phases
from necrocode.kube import Kube, nc_path

WARMUP = 10
"""Cancellations made before the first reading: the first ones load code and fill caches that
are meant to stay (imports, connection pools, kopf's per-resource state)."""


async def _snapshot(op: Operator) -> Obj:
    await asyncio.sleep(2.0)  # let the last cancellation's tasks and connections wind down
    return {"rss_mib": op.memory().get("VmRSS"), **op.connections()}


async def run(kube: Kube, world: World, kubeconfig: Path, out: Path, cancellations: int = 500, runners: int = 2,
              batch: int = 50) -> Obj:
    """`cancellations` JobCancellations of `runners` runners each, one at a time (each Completed
    before the next is created), their worlds built `batch` jobs at a time so that the reading
    before and the one after see the same state: no live job in the namespace."""
    ns = await world.namespace("leak")  # before the operator: it finds it in its first listing
    op = Operator(kubeconfig, out, tag="operator-leak")
    made = 0

    async def cancel_all(count: int) -> None:
        nonlocal made
        for start in range(0, count, batch):
            jobs = [f"l{made + k:04d}" for k in range(min(batch, count - start))]
            await asyncio.gather(*(world.job(ns, j, runners) for j in jobs))
            await world.wait_running(ns, "necrocode.io/role=runner", len(jobs) * runners)
            for j in jobs:
                await kube.create(nc_path(ns, "jobcancellations"), {
                    "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation", "metadata": {"name": f"stop-{j}"},
                    "spec": {"jobName": j, "reason": "benchmark"}})
                await wait_phases(kube, ns, "jobcancellations", {f"stop-{j}"}, timeout=300)
            made += len(jobs)
            left = await world.count(ns, "necrocode.io/role=runner")
            assert left == 0, left

    try:
        op.start()
        await cancel_all(WARMUP)
        before = await _snapshot(op)
        t0 = time.perf_counter()
        await cancel_all(cancellations)
        seconds = time.perf_counter() - t0
        after = await _snapshot(op)
        growth = {k: round(after[k] / before[k] - 1, 3) if before.get(k) else None for k in ("rss_mib", "tcp")}
        say(f"leak: {cancellations} cancellations in {seconds:.0f}s; RSS {before['rss_mib']} -> {after['rss_mib']} MiB, "
            f"TCP connections {before['tcp']} -> {after['tcp']}, fds {before['fds']} -> {after['fds']}")
        return {"cancellations": cancellations, "runners_per_job": runners, "warmup": WARMUP, "seconds": seconds,
                "before": before, "after": after, "growth": growth}
    finally:
        op.stop()
        await world.drop_namespace(ns, wait=300)
