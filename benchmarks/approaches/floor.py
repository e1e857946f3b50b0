"""floor: the writes a cancellation promises, made by a bare client and nothing else: what any
operator keeping the promises needs at least, so ours is reported as a ratio to it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any

from benchmarks.common import GRACE, SELECTOR, Obj
from benchmarks.harness import Harness
from necrocode.concurrency import bounded
from necrocode.kube import core_path, lease_path, nc_path


async def run(h: Harness, n: int) -> Obj:
    """The floor under any operator that keeps the issue's promises: a bare client (no status,
    no Events, no checks) making exactly the writes a cancellation must make, 100 in flight:
    per runner the signal annotation PATCH and the graceful DELETE; once every pod is gone,
    per task its Cancelled status PUT and per lease its release PUT (both on listed objects)."""
    ns = await h.world.namespace("floor")
    try:
        watch, names, client = await h.armed(ns, n, full_world=True)
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
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            prof = h.pprof(f"floor-{n}")
            await bounded(names, stop, h.raw_concurrency)
            await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
            gone = max(watch.deleted.values()) - t0
            tasks, _ = await client.list_all(nc_path(ns, "agenttasks"), label_selector=SELECTOR)
            leases, _ = await client.list_all(lease_path(ns), label_selector=SELECTOR)
            await asyncio.gather(bounded(tasks, cancel_task, h.raw_concurrency // 2),
                                 bounded(leases, release, h.raw_concurrency // 2))
            seconds = time.perf_counter() - t0
            cpu_used = h.cpu_since(cpu)
            if prof:
                await prof
        finally:
            await watch.stop()
            await client.close()
        return {"seconds": seconds, "pods_gone_seconds": gone, "cpu_seconds": cpu_used,
                "api_calls_total": 2 * len(names) + len(tasks) + len(leases) + 2}
    finally:
        await h.world.drop_namespace(ns)
