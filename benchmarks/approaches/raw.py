"""raw: a bare asyncio client deleting the runner pods, with nothing else to do, timed until a
watch has seen every pod DELETED: the API server's own limit for these deletions."""

from __future__ import annotations

import time

from benchmarks.common import GRACE, SELECTOR, Obj
from benchmarks.harness import Harness
from necrocode.concurrency import bounded
from necrocode.kube import core_path


async def delete_each(h: Harness, n: int) -> Obj:
    """raw-delete: concurrent DELETEs of the pods, raw_concurrency in flight."""
    return await _delete(h, n, collection=False)


async def delete_collection(h: Harness, n: int) -> Obj:
    """raw-collection: one DELETE collection by label selector."""
    return await _delete(h, n, collection=True)


async def _delete(h: Harness, n: int, collection: bool) -> Obj:
    ns = await h.world.namespace("raw")
    try:
        watch, names, client = await h.armed(ns, n, full_world=False)
        try:
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            if collection:
                await client.request("DELETE", core_path(ns, "pods"), params={"labelSelector": SELECTOR},
                                     body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": GRACE})
            else:
                await bounded(names, lambda p: client.delete(core_path(ns, "pods", p), grace_period_seconds=GRACE,
                                                             propagation=None), h.raw_concurrency)
            t_issued = time.perf_counter() - t0
            await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
            seconds = max(watch.deleted.values()) - t0
            cpu_used = h.cpu_since(cpu)
        finally:
            await watch.stop()
            await client.close()
        return {"seconds": seconds, "requests_issued_seconds": t_issued, "cpu_seconds": cpu_used,
                "api_calls_total": 1 if collection else len(names)}
    finally:
        await h.world.drop_namespace(ns)
