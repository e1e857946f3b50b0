"""Good neighbour (issue 19, item 2): a steady background load in a namespace the operator does
not serve, a dispatcher-like client creating and deleting pods and reading pods and AgentTasks
at fixed rates, each request's latency and error kept; measured idle (no cancellation) and
during a big cancellation by each approach, ours under each of several API budgets, so the
report can say what our speed costs everyone else on the API server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.approaches import APPROACHES
from benchmarks.cluster import CpuMeter, Operator
from benchmarks.common import NODES, Obj, median, percentile, say
from benchmarks.harness import Harness
from hack.localcluster import LocalCluster
from necrocode.kube import Credentials, Kube, core_path, nc_path
from necrocode.planning import RetryPolicy

PREFIX = "neighbour-"  # not nb-*: no cancellation there (the operator serves the whole cluster)
LABEL = "app=neighbour"
BUDGET_KEYS = {"qps": "NECROCODE_API_QPS", "burst": "NECROCODE_API_BURST", "concurrency": "NECROCODE_CONCURRENCY",
               "cancellation_concurrency": "NECROCODE_CANCELLATION_CONCURRENCY",
               "cancellation_qps": "NECROCODE_CANCELLATION_QPS", "adaptive": "NECROCODE_ADAPTIVE_CONCURRENCY",
               "tolerance_percent": "NECROCODE_ADAPTIVE_TOLERANCE_PERCENT"}
UNLIMITED: dict[str, str | None] = {**{v: None for k, v in BUDGET_KEYS.items() if k != "concurrency"},
                                    "NECROCODE_ADAPTIVE_CONCURRENCY": "false"}
"""`unlimited`: none of the budget variables set (inherited ones removed) and the in-flight limit
fixed, so the operator runs as it did before the budget existed (50 in flight, its old default:
session 20 made the limit adaptive by default); `adaptive=true` for the default budget."""


def parse_budgets(text: str) -> list[tuple[str, dict[str, str | None]]]:
    """'unlimited;qps=200,burst=400;qps=50,burst=100' -> [(label, operator env)]; keys are those
    of BUDGET_KEYS or NECROCODE_* names; every budget starts from `unlimited`."""
    out: list[tuple[str, dict[str, str | None]]] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        env = dict(UNLIMITED)
        if part != "unlimited":
            for kv in part.split(","):
                k, sep, v = kv.strip().partition("=")
                name = BUDGET_KEYS.get(k, k if k.startswith("NECROCODE_") else "")
                if not sep or not name or not v:
                    raise ValueError(f"budget {part!r}: {kv!r} is not KEY=VALUE with KEY one of "
                                     f"{', '.join(BUDGET_KEYS)} or a NECROCODE_* name")
                env[name] = v
        out.append((part, env))
    return out


@dataclasses.dataclass
class Sample:
    started: float  # perf_counter
    kind: str
    seconds: float
    ok: bool


class Load:
    """The neighbour: open loop (a request is sent on schedule whether or not the ones before
    have answered, as independent users do), a client of its own that never retries (an error
    is what a neighbour would see). Writes: a pod created every 1/write_rate s and the one
    created `lifetime` s before deleted; reads, round robin at read_rate: pods listed by label,
    AgentTasks listed by label, a pod read, an AgentTask read."""

    def __init__(self, creds: Credentials, ns: str, write_rate: float, read_rate: float, lifetime: float = 5.0):
        self.kube = Kube(creds, concurrency=200, timeout=30, retry=RetryPolicy(attempts=1))
        self.ns, self.write_rate, self.read_rate = ns, write_rate, read_rate
        self.lifetime = lifetime
        self.samples: list[Sample] = []
        self.windows: list[tuple[str, float, float]] = []
        self._open: tuple[str, float] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    async def setup(self, tasks: int = 50) -> None:
        """The objects the reads find: `tasks` AgentTasks and one long-lived pod."""
        lab = {"app": "neighbour"}
        for i in range(tasks):
            await self.kube.create(nc_path(self.ns, "agenttasks"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
                "metadata": {"name": f"n-t{i:03d}", "labels": lab}, "spec": {"job": "n", "taskId": f"t{i:03d}"}})
        await self.kube.create(core_path(self.ns, "pods"), self._pod("n-anchor", 0))

    def _pod(self, name: str, i: int) -> Obj:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "neighbour", "necrocode.io/kwok-stop": "immediate"}},
                "spec": {"nodeName": f"kwok-node-{i % NODES}", "automountServiceAccountToken": False,
                         "containers": [{"name": "w", "image": "necrocode/worker:bench"}]}}

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._tick(self.write_rate, self._write)),
                       asyncio.create_task(self._tick(self.read_rate, self._read))]

    async def stop(self) -> None:
        for t in [*self._loops, *self._tasks]:
            t.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        await self.kube.close()

    def window(self, label: str) -> Callable[[bool], None]:
        """The Harness.on_window hook for one phase: files what starts inside it under `label`."""
        def mark(opening: bool) -> None:
            if opening:
                self._open = (label, time.perf_counter())
            elif self._open:
                self.windows.append((self._open[0], self._open[1], time.perf_counter()))
                self._open = None
        return mark

    async def idle(self, seconds: float) -> None:
        mark = self.window("idle")
        mark(True)
        await asyncio.sleep(seconds)
        mark(False)

    async def _tick(self, rate: float, fn: Callable[[int], list[tuple[str, Awaitable[Any]]]]) -> None:
        if rate <= 0:
            return
        t0 = time.perf_counter()
        for i in itertools.count():
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            for kind, call in fn(i):
                task = asyncio.create_task(self._timed(kind, call))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _timed(self, kind: str, call: Awaitable[Any]) -> None:
        started = time.perf_counter()
        ok = True
        try:
            await call
        except Exception:  # an error is a sample too: what the neighbour would have met
            ok = False
        self.samples.append(Sample(started, kind, time.perf_counter() - started, ok))

    def _write(self, i: int) -> list[tuple[str, Awaitable[Any]]]:
        calls: list[tuple[str, Awaitable[Any]]] = [("create pod", self.kube.create(
            core_path(self.ns, "pods"), self._pod(f"n-{i:06d}", i)))]
        old = i - int(self.lifetime * self.write_rate)
        if old >= 0:
            calls.append(("delete pod", self.kube.delete(core_path(self.ns, "pods", f"n-{old:06d}"),
                                                         propagation=None)))
        return calls

    def _read(self, i: int) -> list[tuple[str, Awaitable[Any]]]:
        k = i % 4
        if k == 0:
            return [("list pods", self.kube.list_page(core_path(self.ns, "pods"), label_selector=LABEL, limit=500))]
        if k == 1:
            return [("list tasks", self.kube.list_page(nc_path(self.ns, "agenttasks"), label_selector=LABEL,
                                                       limit=500))]
        if k == 2:
            return [("get pod", self.kube.get(core_path(self.ns, "pods", "n-anchor")))]
        return [("get task", self.kube.get(nc_path(self.ns, "agenttasks", f"n-t{i % 50:03d}")))]

    def phases(self) -> Obj:
        """Per phase label (windows of the same label pooled): p50/p99 latency, error rate, the
        count, and p99 by kind of request."""
        by: dict[str, list[Sample]] = {}
        for s in self.samples:
            for label, a, b in self.windows:
                if a <= s.started <= b:
                    by.setdefault(label, []).append(s)
        return {label: stats(xs) for label, xs in by.items()}


def stats(xs: list[Sample]) -> Obj:
    lat = [s.seconds for s in xs]
    kinds: dict[str, list[float]] = {}
    for s in xs:
        kinds.setdefault(s.kind, []).append(s.seconds)
    return {"requests": len(xs), "errors": sum(1 for s in xs if not s.ok),
            "error_rate": round(sum(1 for s in xs if not s.ok) / max(1, len(xs)), 4),
            "p50_ms": _ms(percentile(lat, 50)), "p99_ms": _ms(percentile(lat, 99)), "max_ms": _ms(max(lat, default=None)),
            "p99_ms_by_kind": {k: _ms(percentile(v, 99)) for k, v in sorted(kinds.items())}}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


async def run(h: Harness, cluster: LocalCluster, *, runners: int, approaches: list[str], budgets: str, reps: int,
              idle_seconds: float, write_rate: float, read_rate: float) -> Obj:
    """Each rep: an idle window, then each approach cancelling `runners` runners (ours once per
    budget, each with an operator of its own started with the budget's variables) while the load
    runs; samples are filed by the approach's timed window. The suite's operator must be stopped
    (only one may serve the cluster)."""
    plan: list[tuple[str, str, dict[str, str | None] | None]] = [
        (f"ours [{label}]", "ours", env) for label, env in parse_budgets(budgets) if "ours" in approaches]
    plan += [(name, name, None) for name in approaches if name != "ours"]
    ns = await h.world.namespace("load", prefix=PREFIX)
    load = Load(h.kube.creds, ns, write_rate, read_rate)
    seconds: dict[str, list[float]] = {}
    failed: dict[str, list[str]] = {}
    limits: dict[str, list[Any]] = {}  # ours' in-flight limit during each run (approaches.ours.sample_limit)
    try:
        await load.setup()
        load.start()
        await asyncio.sleep(2.0)  # past the first deletes' start
        for rep in range(reps):
            await load.idle(idle_seconds)
            for i, (label, name, env) in enumerate(plan):
                op = Operator(h.kubeconfig, h.out or h.op.out, env=env, tag=f"operator-neighbour-{rep}-{i}")
                if env is not None:
                    op.start()
                h2 = dataclasses.replace(h, op=op, meter=CpuMeter(cluster, op), on_window=load.window(label))
                try:
                    r = await APPROACHES[name].run(h2, runners)
                    seconds.setdefault(label, []).append(r["seconds"])
                    limit = r.get("concurrency_limit")  # ours only
                    if limit is not None:
                        limits.setdefault(label, []).append(limit)
                    say(f"neighbour rep {rep + 1}/{reps} {label:<28} {r['seconds']:8.2f} s"
                        + (f"  limit {json.dumps(limit)}" if limit is not None else ""))
                except Exception as exc:  # recorded and reported, and the run goes on
                    failed.setdefault(label, []).append(repr(exc)[:1000])
                    say(f"neighbour rep {rep + 1}/{reps} {label} FAILED: {exc!r}"[:400])
                finally:
                    op.stop()
    finally:
        await load.stop()
        with contextlib.suppress(Exception):
            await h.world.drop_namespace(ns)
    phases = load.phases()
    return {"runners": runners, "reps": reps, "idle_seconds": idle_seconds, "write_rate_per_second": write_rate,
            "read_rate_per_second": read_rate, "budgets": {label: {k: v for k, v in env.items() if v is not None}
                                                           for label, env in parse_budgets(budgets)},
            "phases": phases, "failed_runs": failed, "concurrency_limit": limits,
            "cancellation_seconds": {k: {"runs": v, "median": median(v)} for k, v in seconds.items()}}
