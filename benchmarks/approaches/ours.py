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


GAUGES = {"concurrency_limit": ("necrocode_api_concurrency_limit", 1),
          "min_rtt_ms": ("necrocode_api_min_rtt_seconds", 1000),
          "loop_lag_ms": ("necrocode_event_loop_lag_seconds", 1000)}
"""What sample_limit reads: the in-flight limit, the round trip at the low limit it is judged
against, and how late the operator's event loop ran (each by its key in the result and a scale)."""


async def sample_limit(h: Harness, stop: asyncio.Event, every: float = 1.0) -> Obj:
    """The operator's adaptive limit and what it judges by (GAUGES) every `every` seconds until
    `stop` is set: how they moved during the timed window (a fixed limit: one value). Returns
    the limit's samples' nearest-rank percentiles, with those of the other gauges under their
    keys; a failed scrape is skipped, a gauge not exported (or 0: not measured yet) left out.

    Once a second, not more: each scrape costs the operator about 4 ms of its CPU (and of the
    interpreter's lock), which at 0.25 s (session 21) was 0.8 CPU-seconds of a 5,000-runner
    cancellation (docs/benchmarks.md, session 22)."""
    seen: dict[str, list[float]] = {k: [] for k in GAUGES}
    while not stop.is_set():
        try:
            values = await asyncio.to_thread(h.op.gauges, [name for name, _ in GAUGES.values()])
        except OSError:
            values = {}
        for key, (name, scale) in GAUGES.items():
            v = values.get(name)
            if v is not None and (v > 0 or key == "concurrency_limit"):
                seen[key].append(round(v * scale, 3))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
    out = _quantiles(seen.pop("concurrency_limit"))
    out.update({k: _quantiles(v) for k, v in seen.items() if v})
    return out


def _quantiles(seen: list[float]) -> Obj:
    if not seen:
        return {"samples": 0}
    return {"samples": len(seen), **{f"p{q}": percentile(seen, q) for q in (10, 50, 90)}, "max": max(seen)}


def _step_seconds(step: Obj) -> float | None:
    a, b = parse_time(step.get("startedAt")), parse_time(step.get("finishedAt"))
    return None if a is None or b is None else round((b - a).total_seconds(), 3)
