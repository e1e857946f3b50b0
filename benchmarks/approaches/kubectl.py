"""kubectl: `kubectl delete pods -l ... --wait`, timed until kubectl returns."""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import SELECTOR, Obj
from benchmarks.harness import Harness


async def run(h: Harness, n: int) -> Obj:
    """`kubectl delete pods -l necrocode.io/job=job --wait`, what a user types by hand."""
    ns = await h.world.namespace("kubectl")
    try:
        await h.world.pods_only(ns, "job", n)
        await h.world.wait_running(ns, SELECTOR, n)
        await asyncio.sleep(1.0)
        cmd = [str(h.kubectl), "--kubeconfig", str(h.kubeconfig), "-n", ns, "delete", "pods", "-l", SELECTOR,
               "--wait"]
        cpu = h.cpu_start()
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        seconds = time.perf_counter() - t0
        cpu_used = h.cpu_since(cpu)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl failed: {err.decode()[-500:]}")
        left = await h.world.count(ns, SELECTOR)
        return {"seconds": seconds, "pods_left": left, "cpu_seconds": cpu_used}
    finally:
        await h.world.drop_namespace(ns)
