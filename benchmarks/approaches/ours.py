"""ours: a JobCancellation of the job, timed from its creation to its phase Completed."""

from __future__ import annotations

import asyncio
import time

from benchmarks.cluster import delta
from benchmarks.common import SELECTOR, Obj, percentile
from benchmarks.harness import Harness
from benchmarks.world import wait_phases
from necrocode.kube import lease_path, nc_path
from necrocode.model import parse_time


async def run(h: Harness, n: int) -> Obj:
    """A JobCancellation, from its creation to phase Completed: every runner gone, every task
    Cancelled, every lease released (the operator's own Verify step checks, and so does this)."""
    ns = await h.world.namespace("ours")
    try:
        await h.world.job(ns, "job", n)
        await h.world.wait_running(ns, SELECTOR, n)
        await asyncio.sleep(1.0)  # let kwok's status writes settle
        before = h.op.metrics()
        cpu = h.cpu_start()
        t0 = time.perf_counter()
        prof = h.pprof(f"ours-{n}")
        stop = asyncio.Event()
        limits = asyncio.create_task(sample_limit(h, stop))
        try:
            await h.kube.create(nc_path(ns, "jobcancellations"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation", "metadata": {"name": "stop"},
                "spec": {"jobName": "job", "reason": "benchmark"}})
            done = await wait_phases(h.kube, ns, "jobcancellations", {"stop"}, timeout=900)
            seconds = done["stop"] - t0
            cpu_used = h.cpu_since(cpu)
        finally:
            stop.set()
            limit_seen = await limits
        if prof:
            await prof
        calls = delta(before, h.op.metrics())
        jc = await h.kube.get(nc_path(ns, "jobcancellations", "stop"))
        left = await h.world.count(ns, SELECTOR)
        leases, _ = await h.kube.list_all(lease_path(ns), label_selector=SELECTOR)
        held = [x for x in leases if (x.get("spec") or {}).get("holderIdentity")]
        st = jc.get("status") or {}
        steps = {s["name"]: _step_seconds(s) for s in st.get("steps", [])}
        assert left == 0 and not held, (left, len(held))
        return {"seconds": seconds, "api_calls": calls, "api_calls_total": sum(calls.values()),
                "cpu_seconds": cpu_used, "steps": steps, "progress": st.get("progress"), "pods_left": left,
                "leases_held": len(held), "concurrency_limit": limit_seen}
    finally:
        await h.world.drop_namespace(ns)


async def sample_limit(h: Harness, stop: asyncio.Event, every: float = 0.25) -> Obj:
    """The operator's in-flight limit (necrocode_api_concurrency_limit) every `every` seconds
    until `stop` is set: how the adaptive limit moved during the timed window (fixed: one
    value). Returns its samples' nearest-rank percentiles; a failed scrape is skipped."""
    seen: list[float] = []
    while not stop.is_set():
        try:
            v = await asyncio.to_thread(h.op.gauge, "necrocode_api_concurrency_limit")
        except OSError:
            v = None
        if v is not None:
            seen.append(v)
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
    if not seen:
        return {"samples": 0}
    return {"samples": len(seen), **{f"p{q}": percentile(seen, q) for q in (10, 50, 90)}, "max": max(seen)}


def _step_seconds(step: Obj) -> float | None:
    a, b = parse_time(step.get("startedAt")), parse_time(step.get("finishedAt"))
    return None if a is None or b is None else round((b - a).total_seconds(), 3)
