"""What one API call of each kind a cancellation makes costs the machine (--write-costs): the
figures that say what bounds a big cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.common import GRACE, SELECTOR, Obj
from benchmarks.harness import Harness
from benchmarks.world import GoneWatch
from necrocode.concurrency import bounded
from necrocode.kube import core_path, lease_path, nc_path


async def write_costs(h: Harness, n: int, concurrency: int = 50) -> Obj:
    """CPU per API call of each kind a cancellation makes, n calls of each at `concurrency`
    in flight, on a world like the one a cancellation sees: what bounds us, measured."""
    ns = await h.world.namespace("costs")
    out: Obj = {}
    try:
        await h.world.job(ns, "job", n)
        await h.world.wait_running(ns, SELECTOR, n)
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
            "pod annotation PATCH (signal)": lambda t: h.kube.merge_patch(
                core_path(ns, "pods", f"job-{t}-runner"),
                {"metadata": {"annotations": {"necrocode.io/cancel-requested": '{"reason":"benchmark"}'}}}),
            "AgentTask status PATCH": lambda t: h.kube.merge_patch(
                nc_path(ns, "agenttasks", f"job-{t}", "status"),
                {"status": {"state": "Cancelled", "cancellation": {"reason": "benchmark", "cancelledBy": "stop"}}}),
            "Lease PATCH (release)": lambda t: h.kube.merge_patch(
                lease_path(ns, f"job-slot-{t[1:]}"),
                {"metadata": {"labels": {"necrocode.io/job": None, "necrocode.io/task": None,
                                         "necrocode.io/slot-state": "dirty"}}, "spec": {"holderIdentity": None}}),
            "Event POST": lambda t: h.kube.create(core_path(ns, "events"), event(t)),
        }
        tasks = {t["metadata"]["name"]: t for t in (await h.kube.list_all(
            nc_path(ns, "agenttasks"), label_selector=SELECTOR))[0]}
        leases = {x["metadata"]["name"]: x for x in (await h.kube.list_all(
            lease_path(ns), label_selector=SELECTOR))[0]}

        def put_task(t: str) -> Awaitable[Any]:
            obj = tasks[f"job-{t}"]
            obj["status"] = {**(obj.get("status") or {}), "state": "Failed"}
            return h.kube.request("PUT", nc_path(ns, "agenttasks", f"job-{t}", "status"), body=obj)

        def put_lease(t: str) -> Awaitable[Any]:
            obj = leases[f"job-slot-{t[1:]}"]
            obj["spec"] = {**obj["spec"], "holderIdentity": "x"}
            return h.kube.request("PUT", lease_path(ns, f"job-slot-{t[1:]}"), body=obj)

        ops = {"AgentTask status PUT": put_task, "Lease PUT": put_lease, **ops}  # first: on the listed versions
        for label, op in ops.items():
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            await bounded(tids, op, concurrency)
            out[label] = _cost(n, time.perf_counter() - t0, h.cpu_since(cpu))
        watch = GoneWatch(h.kube, ns, SELECTOR)
        names = await watch.start()
        try:
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            await bounded(names, lambda p: h.kube.delete(core_path(ns, "pods", p), grace_period_seconds=GRACE,
                                                            propagation=None), concurrency)
            await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
            out["pod DELETE (+ kwok's final delete)"] = _cost(
                n, max(watch.deleted.values()) - t0, h.cpu_since(cpu))
        finally:
            await watch.stop()
        return out
    finally:
        await h.world.drop_namespace(ns)


def _cost(n: int, seconds: float, cpu: Obj) -> Obj:
    per = {k: round(v * 1000 / n, 2) for k, v in cpu.items() if not k.startswith("_") and v}
    total = sum(v for k, v in cpu.items() if not k.startswith("_"))
    return {"calls": n, "seconds": round(seconds, 2), "calls_per_second": round(n / seconds, 1),
            "cpu_ms_per_call": per, "cpu_ms_per_call_total": round(total * 1000 / n, 2)}
