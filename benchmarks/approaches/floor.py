"""floor: the writes a cancellation promises, made by a bare client and nothing else: what any
operator keeping the promises needs at least, so ours is reported as a ratio to it."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable
from typing import Any

from benchmarks.common import GRACE, SELECTOR, Obj
from benchmarks.harness import Harness
from benchmarks.world import GoneWatch
from necrocode.concurrency import bounded
from necrocode.kube import Kube, core_path, lease_path, nc_path


async def run(h: Harness, n: int) -> Obj:
    """The floor under any operator that keeps the issue's promises: a bare client (no status,
    no Events, no checks) making exactly the writes a cancellation must make, 100 in flight:
    per runner the graceful DELETE (mode Cancel without a cooperative window: the delete is the
    signal; Writes(signal=True) adds the annotation PATCH a window needs); once every pod is
    gone, per task its Cancelled status PUT and per lease its release PUT (listed objects)."""
    ns = await h.world.namespace("floor")
    try:
        watch, names, client = await h.armed(ns, n, full_world=True)
        try:
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            prof = h.pprof(f"floor-{n}")
            calls = await Writes(client, ns, h.raw_concurrency).job(SELECTOR, names, watch)
            seconds = time.perf_counter() - t0
            cpu_used = h.cpu_since(cpu)
            gone = max(watch.deleted.values()) - t0
            if prof:
                await prof
        finally:
            await watch.stop()
            await client.close()
        return {"seconds": seconds, "pods_gone_seconds": gone, "cpu_seconds": cpu_used, "api_calls_total": calls}
    finally:
        await h.world.drop_namespace(ns)


async def many(client: Kube, ns: str, pods_of: dict[str, list[str]], watch: GoneWatch, concurrency: int) -> int:
    """The floor for many jobs at once (the `many` scenario): each job cancelled as if alone
    (its runners signalled and deleted; once that job's runners are all gone, its tasks and
    leases, listed by the job's label, written), every job started together and one client of
    `concurrency` connections shared by all (the operator's, too, is one client). Returns the
    API calls made; done when the last job's last write is."""
    w = Writes(client, ns, concurrency)
    job_of = {p: j for j, ps in pods_of.items() for p in ps}
    left = {j: len(ps) for j, ps in pods_of.items()}
    finishing: list[asyncio.Task[int]] = [
        asyncio.create_task(w.finish(f"necrocode.io/job={j}")) for j, k in left.items() if k == 0]
    signalled = asyncio.create_task(bounded([p for ps in pods_of.values() for p in ps], w.stop, concurrency))
    seen = 0
    while len(finishing) < len(left):  # each job finishes as soon as its own runners are gone
        await watch.until(functools.partial(_more, watch, seen), timeout=900)
        for p in watch.gone[seen:]:
            j = job_of.get(p)
            if j is not None:
                left[j] -= 1
                if left[j] == 0:
                    finishing.append(asyncio.create_task(w.finish(f"necrocode.io/job={j}")))
        seen = len(watch.gone)
    await signalled
    return w.per_runner * len(job_of) + sum(await asyncio.gather(*finishing))


def _more(watch: GoneWatch, seen: int) -> bool:
    return len(watch.gone) > seen


class Writes:
    """The promised writes of one namespace's cancellations, by a bare client."""

    def __init__(self, client: Kube, ns: str, concurrency: int, signal: bool = False):
        """`signal`: each runner is annotated before its delete (what a cooperative window, or a
        runner that opted in, needs; mode Cancel's default is the delete alone)."""
        self.client, self.ns, self.concurrency, self.with_signal = client, ns, concurrency, signal
        self.per_runner = 2 if signal else 1
        self.stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.signal = {"metadata": {"annotations": {"necrocode.io/cancel-requested": json.dumps(
            {"reason": "benchmark", "requestedAt": self.stamp, "cancellation": "floor"})}}}

    async def job(self, selector: str, names: list[str], watch: GoneWatch) -> int:
        """One job: its runners stopped, then (every pod gone) its tasks and leases written."""
        await bounded(names, self.stop, self.concurrency)
        await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
        return self.per_runner * len(names) + await self.finish(selector)

    async def stop(self, pod: str) -> None:
        if self.with_signal:
            await self.client.merge_patch(core_path(self.ns, "pods", pod), self.signal, meta_only=True)
        await self.client.delete(core_path(self.ns, "pods", pod), grace_period_seconds=GRACE, propagation=None,
                                 meta_only=True)

    async def finish(self, selector: str) -> int:
        """The job's tasks Cancelled and its leases released (listed by `selector`); the calls made."""
        tasks, _ = await self.client.list_all(nc_path(self.ns, "agenttasks"), label_selector=selector)
        leases, _ = await self.client.list_all(lease_path(self.ns), label_selector=selector)
        await asyncio.gather(bounded(tasks, self._cancel_task, max(1, self.concurrency // 2)),
                             bounded(leases, self._release, max(1, self.concurrency // 2)))
        return len(tasks) + len(leases) + 2

    def _cancel_task(self, t: Obj) -> Awaitable[Any]:
        t["status"] = {**(t.get("status") or {}), "state": "Cancelled", "cancellation": {
            "reason": "benchmark", "requestedBy": "bench", "cancelledAt": self.stamp, "cancelledBy": "floor"}}
        return self.client.request("PUT", nc_path(self.ns, "agenttasks", t["metadata"]["name"], "status"), body=t)

    def _release(self, x: Obj) -> Awaitable[Any]:
        labels = {k: v for k, v in (x["metadata"].get("labels") or {}).items()
                  if k not in ("necrocode.io/job", "necrocode.io/task")}
        x["metadata"]["labels"] = {**labels, "necrocode.io/slot-state": "dirty"}
        x["spec"] = {k: v for k, v in x["spec"].items() if k != "holderIdentity"}
        return self.client.request("PUT", lease_path(self.ns, x["metadata"]["name"]), body=x)
