"""job-controller: the same work as a batch/v1 Job, stopped by kube-controller-manager's Job
controller (`suspend: true`): what Kubernetes itself does for a group of pods."""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import GRACE, Obj
from benchmarks.harness import Harness
from benchmarks.world import GoneWatch
from necrocode.kube import group_path


async def run(h: Harness, n: int) -> Obj:
    """A batch/v1 Job of n pods, patched to `suspend: true`, timed until its pods are gone."""
    ns = await h.world.namespace("jobctl")
    sel = "batch.kubernetes.io/job-name=work"
    try:
        await h.kube.create(group_path("batch", "v1", ns, "jobs"), {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "work"},
            "spec": {"parallelism": n, "completions": n, "backoffLimit": 0,
                     "template": {"metadata": {"labels": {"necrocode.io/kwok-stop": "immediate"}},
                                  "spec": {"restartPolicy": "Never", "nodeSelector": {"type": "kwok"},
                                           "terminationGracePeriodSeconds": GRACE,
                                           "automountServiceAccountToken": False,
                                           "containers": [{"name": "w", "image": "necrocode/runner:bench"}]}}}})
        t_setup = time.perf_counter()
        await h.world.wait_running(ns, sel, n, timeout=900)
        setup = time.perf_counter() - t_setup
        await asyncio.sleep(1.0)
        watch = GoneWatch(h.kube, ns, sel)
        names = await watch.start()
        try:
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            prof = h.pprof(f"job-controller-{n}")
            await h.kube.merge_patch(group_path("batch", "v1", ns, "jobs", "work"), {"spec": {"suspend": True}})
            await watch.until(lambda: len(watch.deleted) >= len(names), timeout=900)
            seconds = max(watch.deleted.values()) - t0
            cpu_used = h.cpu_since(cpu)
            if prof:
                await prof
            first = min(watch.terminating.values()) - t0
        finally:
            await watch.stop()
        return {"seconds": seconds, "first_deletion_seconds": first, "pods": len(names), "setup_seconds": setup,
                "cpu_seconds": cpu_used}
    finally:
        await h.world.drop_namespace(ns)
