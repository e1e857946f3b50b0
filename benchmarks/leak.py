"""Leak check (issue 19, item 5): a fresh operator's RSS and open connections before and after
many small cancellations made one after the other; what grows with the number of
cancellations served (a client, a watch, a task or a record kept per cancellation) shows here
long before it would take an operator down in production."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from benchmarks.cluster import Operator, cpu_seconds
from benchmarks.common import Obj, say
from benchmarks.world import World, wait_phases
from necrocode.kube import Kube, nc_path

WARMUP = 10
"""Cancellations made before the first reading: the first ones load code and fill caches that
are meant to stay (imports, connection pools, kopf's per-resource state)."""


async def _snapshot(op: Operator, quiet_seconds: float = 5.0, timeout: float = 120) -> Obj:  # noqa: ASYNC109
    """The reading once the operator has been idle (under 1 % of a core) for `quiet_seconds`:
    kopf works through the last events of each object, then keeps a worker per object for a
    few seconds more (its batching idle timeout); read earlier, that work in progress shows as
    growth (seen: half the removed records' state still held 2 s after the last was gone)."""
    deadline, quiet, last = time.monotonic() + timeout, 0.0, cpu_seconds(op.pid)
    while quiet < quiet_seconds and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = cpu_seconds(op.pid)
        quiet = quiet + 1.0 if now - last < 0.01 else 0.0
        last = now
    return {**_memory(op), **op.connections(), "kopf_memories": op.gauge("necrocode_kopf_memories")}


def _memory(op: Operator) -> Obj:
    """Its RSS (anonymous and file-backed apart) and its threads, read at once."""
    st = op.status()
    mib = {k: round(st[k] / 1024, 1) if k in st else None for k in ("VmRSS", "RssAnon", "RssFile")}
    return {"rss_mib": mib["VmRSS"], "anon_mib": mib["RssAnon"], "file_mib": mib["RssFile"], "threads": st.get("Threads")}


async def _remove_records(kube: Kube, ns: str, timeout: float = 300) -> None:  # noqa: ASYNC109
    """Delete the namespace's JobCancellations (as their TTL would) and wait until they are gone."""
    items, _ = await kube.list_all(nc_path(ns, "jobcancellations"), meta_only=True)
    await asyncio.gather(*(kube.delete(nc_path(ns, "jobcancellations", i["metadata"]["name"])) for i in items))
    deadline = time.monotonic() + timeout
    while (await kube.list_all(nc_path(ns, "jobcancellations"), meta_only=True))[0]:
        assert time.monotonic() < deadline, "the finished records were not removed"
        await asyncio.sleep(1.0)


def median_run(runs: list[Obj]) -> Obj:
    """The run whose RSS growth after its cancellations is the median (the lower middle one of an
    even count): a whole run, so that its readings stay those of one operator."""
    ranked = sorted(runs, key=lambda r: r["growth"]["rss_mib"] if r["growth"]["rss_mib"] is not None else math.inf)
    return {**ranked[(len(ranked) - 1) // 2], "of_runs": [r["growth"]["rss_mib"] for r in runs]}


async def run(kube: Kube, world: World, kubeconfig: Path, out: Path, cancellations: int = 500, runners: int = 2,
              batch: int = 50, tag: str = "operator-leak") -> Obj:
    """`cancellations` JobCancellations of `runners` runners each, one at a time (each Completed
    before the next is created), their worlds built `batch` jobs at a time so that the reading
    before and the one after see the same state: no live job in the namespace."""
    ns = await world.namespace("leak")  # before the operator: it finds it in its first listing
    op = Operator(kubeconfig, out, tag=tag)
    made = 0
    curve: list[Obj] = []  # RSS after each batch, read at once (not idle): the shape of any growth

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
            curve.append({"made": made, **_memory(op)})

    try:
        op.start()
        await cancel_all(WARMUP)
        before = await _snapshot(op)
        t0 = time.perf_counter()
        await cancel_all(cancellations)
        seconds = time.perf_counter() - t0
        after = await _snapshot(op)
        # the finished records are still there (kept for their TTL, 7 days by default) and the
        # operator watches them: what it keeps per record shows as growth too. Removed, what
        # stays is what it kept per cancellation served (an allocator keeps some freed memory).
        await _remove_records(kube, ns)
        removed = await _snapshot(op)
        # Python's allocator keeps freed memory for reuse rather than returning it, so the RSS
        # after the removal cannot tell state freed from state leaked; a second round can: what
        # was freed is reused (RSS about where the first round left it), what leaks adds again.
        await cancel_all(cancellations)
        second = await _snapshot(op)
        await _remove_records(kube, ns)
        second_removed = await _snapshot(op)

        def growth(of: Obj) -> Obj:
            return {k: round(of[k] / before[k] - 1, 3) if before.get(k) else None for k in ("rss_mib", "tcp")}

        per_record = round((after["rss_mib"] - before["rss_mib"]) * 1024 / cancellations, 1)
        say(f"leak: {cancellations} cancellations in {seconds:.0f}s; RSS {before['rss_mib']} -> {after['rss_mib']} MiB "
            f"({per_record} KiB per finished record kept), {removed['rss_mib']} MiB once the records were removed, "
            f"{second['rss_mib']} MiB after {cancellations} more, {second_removed['rss_mib']} MiB once those were "
            f"removed; TCP connections {before['tcp']} -> {after['tcp']} -> {removed['tcp']} -> {second['tcp']} -> "
            f"{second_removed['tcp']}, fds {before['fds']} -> {after['fds']} -> {removed['fds']} -> {second['fds']} -> "
            f"{second_removed['fds']}; kopf memories kept {before['kopf_memories']} -> {after['kopf_memories']}")
        return {"cancellations": cancellations, "runners_per_job": runners, "warmup": WARMUP, "seconds": seconds,
                "before": before, "after": after, "growth": growth(after), "records_removed": removed,
                "growth_records_removed": growth(removed), "kib_per_record_kept": per_record,
                "second_round": second, "growth_second_round": growth(second),
                "second_round_removed": second_removed, "growth_second_round_removed": growth(second_removed),
                "curve": curve}
    finally:
        op.stop()
        await world.drop_namespace(ns, wait=300)
