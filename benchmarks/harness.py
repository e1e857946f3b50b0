"""What each measurement is given: the client, the world builder, the operator, the CPU meter
and the API server's profiler, and the step every bare-client approach starts from (n Running
runners, a watch on them, a client of its own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.cluster import CpuMeter, Operator
from benchmarks.common import SELECTOR
from benchmarks.world import GoneWatch, World
from necrocode.kube import Kube


@dataclass
class Harness:
    kube: Kube
    world: World
    op: Operator
    kubectl: Path
    kubeconfig: Path
    raw_concurrency: int = 100
    meter: CpuMeter | None = None
    pprof_seconds: int = 0
    out: Path | None = None
    on_window: Callable[[bool], None] | None = None
    """Told when an approach's timed window opens (True: cpu_start) and closes (False:
    cpu_since): the neighbour load files its samples by it."""

    def pprof(self, tag: str) -> asyncio.Task[None] | None:
        """With --apiserver-pprof S: the API server's CPU profile over the first S seconds of a
        timed window, saved as <out>/<tag>-rep<i>.pprof (`go tool pprof -top` reads it)."""
        if not self.pprof_seconds or self.out is None:
            return None
        path = self.out / f"{tag}-rep{len(list(self.out.glob(f'{tag}-rep*.pprof')))}.pprof"

        async def fetch() -> None:
            session = self.kube.session
            async with session.get(self.kube.creds.host + "/debug/pprof/profile",
                                   params={"seconds": str(self.pprof_seconds)}, headers=self.kube.creds.headers(),
                                   timeout=aiohttp.ClientTimeout(total=self.pprof_seconds + 60)) as r:
                path.write_bytes(await r.read())
        return asyncio.create_task(fetch())

    def cpu_start(self) -> dict[str, float]:
        """Called just before an approach's clock starts."""
        if self.on_window:
            self.on_window(True)
        return self.meter.snap() if self.meter else {}

    def cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        """Called as soon as an approach's work is observably done."""
        if self.on_window:
            self.on_window(False)
        return self.meter.since(before) if self.meter and before else {}

    async def armed(self, ns: str, n: int, *, full_world: bool,
                    client: Kube | None = None) -> tuple[GoneWatch, list[str], Kube]:
        """n Running runner pods (with their job, tasks and leases when `full_world`), a watch
        following them, and `client` (by default a bare one of raw_concurrency connections):
        ready to time."""
        if full_world:
            await self.world.job(ns, "job", n)
        else:
            await self.world.pods_only(ns, "job", n)
        await self.world.wait_running(ns, SELECTOR, n)
        await asyncio.sleep(1.0)
        watch = GoneWatch(self.kube, ns, SELECTOR)
        names = await watch.start()
        return watch, names, client or Kube(self.kube.creds, concurrency=self.raw_concurrency, timeout=120)
