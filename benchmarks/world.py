"""The world a measurement runs in: namespaces with an AgentJob, its Running tasks, their runner
pods (on kwok nodes) and held repo-slot leases, built quickly and not timed; and the watches
that tell when the work is observably done (every pod DELETED, every cancellation terminal)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.common import GRACE, NODES, NS_PREFIX, TERMINAL, Obj, say
from necrocode.concurrency import bounded
from necrocode.kube import AlreadyExists, ApiError, Kube, NotFound, core_path, lease_path, nc_path


class World:
    """Builds namespaces, jobs, tasks, leases and runner pods quickly (not measured)."""

    def __init__(self, kube: Kube, concurrency: int = 64):
        self.kube, self.concurrency = kube, concurrency

    async def namespace(self, tag: str, prefix: str = NS_PREFIX) -> str:
        """A fresh namespace (served by the operator unless `prefix` says otherwise)."""
        ns = f"{prefix}{tag}-{uuid.uuid4().hex[:6]}"
        await self.kube.create(core_path(None, "namespaces"), {"metadata": {"name": ns}})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # pods need the default ServiceAccount
            try:
                await self.kube.get(core_path(ns, "serviceaccounts", "default"))
                return ns
            except NotFound:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"no default ServiceAccount in {ns}")

    async def drop_namespace(self, ns: str, wait: float = 180) -> None:
        with contextlib.suppress(NotFound):
            await self.kube.delete(core_path(None, "namespaces", ns), grace_period_seconds=0)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                await self.kube.get(core_path(None, "namespaces", ns))
            except NotFound:
                return
            await asyncio.sleep(0.5)
        say(f"  (namespace {ns} still terminating after {wait:.0f}s; going on)")

    async def retry(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        for attempt in range(8):
            try:
                return await fn()
            except ApiError as exc:
                if exc.status not in (0, 429, 500, 503, 504) or attempt == 7:
                    raise
                await asyncio.sleep(0.2 * 2 ** attempt)
        return None

    async def create(self, path: str, body: Obj) -> None:
        """Create an object of a name unique to this run, retried as `retry` does: an
        AlreadyExists can only be an earlier attempt of this same create whose answer was lost
        (the client retries too), so it is the object wanted (seen once in a leak check: a pod's
        create answered 409 after a retried timeout)."""
        try:
            await self.retry(lambda: self.kube.create(path, body))
        except AlreadyExists:
            pass

    @staticmethod
    def pod(job: str, task: str, i: int, labels: dict[str, str] | None = None) -> Obj:
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job}-{task}-runner", "labels": labels or {
                "necrocode.io/job": job, "necrocode.io/task": task, "necrocode.io/role": "runner",
                "necrocode.io/kwok-stop": "immediate"}},
            "spec": {"nodeName": f"kwok-node-{i % NODES}", "terminationGracePeriodSeconds": GRACE,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "runner", "image": "necrocode/runner:bench"}]},
        }

    async def pods_only(self, ns: str, job: str, n: int) -> None:
        await bounded(range(n), lambda i: self.retry(
            lambda: self.kube.create(core_path(ns, "pods"), self.pod(job, f"t{i:05d}", i))), self.concurrency)

    async def job(self, ns: str, job: str, n: int) -> None:
        """An AgentJob (Running) with n Running tasks, each with a runner pod and a held lease."""
        await self.kube.create(nc_path(ns, "agentjobs"), {
            "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentJob", "metadata": {"name": job},
            "spec": {"dispatch": {"blocked": False}}})
        await self.kube.merge_patch(nc_path(ns, "agentjobs", job, "status"), {"status": {"phase": "Running"}})

        async def one(i: int) -> None:
            tid = f"t{i:05d}"
            pod = f"{job}-{tid}-runner"
            slot = f"{job}-slot-{i:05d}"
            await self.create(core_path(ns, "pods"), self.pod(job, tid, i))
            await self.create(lease_path(ns), {
                "metadata": {"name": slot, "labels": {"necrocode.io/repo-pool": "bench", "necrocode.io/job": job,
                                                      "necrocode.io/task": tid}},
                "spec": {"holderIdentity": pod, "leaseDurationSeconds": 3600}})
            name = f"{job}-{tid}"
            await self.create(nc_path(ns, "agenttasks"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
                "metadata": {"name": name, "labels": {"necrocode.io/job": job, "necrocode.io/task": tid}},
                "spec": {"job": job, "taskId": tid, "dependsOn": []}})
            await self.retry(lambda: self.kube.merge_patch(nc_path(ns, "agenttasks", name, "status"), {
                "status": {"state": "Running", "runner": pod, "repoSlot": slot}}))

        await bounded(range(n), one, self.concurrency)

    async def wait_running(self, ns: str, selector: str, n: int, timeout: float = 600) -> None:  # noqa: ASYNC109
        """Until n pods match and none is not Running (cheap: a field-selected list of one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = await self.kube.list_page(core_path(ns, "pods"), label_selector=selector,
                                            field_selector="status.phase!=Running", limit=1)
            if not out.get("items"):
                total = await self.count(ns, selector)
                if total >= n:
                    return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"pods {selector} in {ns} not all Running after {timeout}s")

    async def count(self, ns: str, selector: str) -> int:
        n, cont = 0, None
        while True:
            out = await self.kube.list_page(core_path(ns, "pods"), label_selector=selector, limit=5000, continue_=cont)
            n += len(out.get("items") or [])
            cont = (out.get("metadata") or {}).get("continue")
            if not cont:
                return n


class GoneWatch:
    """A watch on pods (label selector) started before the clock starts; resolves when every
    name in `names` has been DELETED (or, with first=True, at the first deletion seen)."""

    def __init__(self, kube: Kube, ns: str, selector: str):
        self.kube, self.ns, self.selector = kube, ns, selector
        self.deleted: dict[str, float] = {}
        self.gone: list[str] = []  # names in the order they were DELETED (read incrementally)
        self.terminating: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> list[str]:
        items, rv = await self.kube.list_all(core_path(self.ns, "pods"), label_selector=self.selector, page=5000)
        self.task = asyncio.create_task(self._run(rv))
        return [p["metadata"]["name"] for p in items]

    async def _run(self, rv: str) -> None:
        while True:
            try:
                async for ev in self.kube.watch(core_path(self.ns, "pods"), label_selector=self.selector,
                                                resource_version=rv):
                    now = time.perf_counter()
                    meta = (ev.get("object") or {}).get("metadata") or {}
                    rv = meta.get("resourceVersion") or rv
                    name = str(meta.get("name"))
                    if ev.get("type") == "DELETED":
                        if name not in self.deleted:
                            self.gone.append(name)
                        self.deleted.setdefault(name, now)
                        self.terminating.setdefault(name, now)
                        self.changed.set()
                    elif ev.get("type") == "MODIFIED" and meta.get("deletionTimestamp"):
                        self.terminating.setdefault(name, now)
                        self.changed.set()
            except ApiError as exc:
                say(f"  (pod watch broken: {exc}; resuming)")
                await asyncio.sleep(0.1)

    async def until(self, pred: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out waiting for pods to go")
            self.changed.clear()
            if pred():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def wait_phases(kube: Kube, ns: str, plural: str, names: set[str], timeout: float) -> dict[str, float]:  # noqa: ASYNC109
    """Watch cancellations in ns until each of `names` has a terminal phase; returns the time
    (perf_counter) each was seen terminal, and raises if any ends other than Completed."""
    seen: dict[str, float] = {}
    phases: dict[str, str] = {}
    path = nc_path(ns, plural)
    items, rv = await kube.list_all(path)
    for o in items:
        ph = (o.get("status") or {}).get("phase")
        if o["metadata"]["name"] in names and ph in TERMINAL:
            seen[o["metadata"]["name"]], phases[o["metadata"]["name"]] = time.perf_counter(), ph
    deadline = time.monotonic() + timeout
    while len(seen) < len(names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names) - len(seen)} {plural} not finished after {timeout}s")
        try:
            async for ev in kube.watch(path, resource_version=rv, timeout_seconds=int(max(1, deadline - time.monotonic()))):
                o = ev.get("object") or {}
                rv = (o.get("metadata") or {}).get("resourceVersion") or rv
                name = (o.get("metadata") or {}).get("name")
                ph = (o.get("status") or {}).get("phase")
                if name in names and name not in seen and ph in TERMINAL:
                    seen[name], phases[name] = time.perf_counter(), ph
                    if len(seen) == len(names):
                        break
        except ApiError as exc:
            if exc.status == 410:
                items, rv = await kube.list_all(path)
            await asyncio.sleep(0.05)
    bad = {n: p for n, p in phases.items() if p != "Completed"}
    if bad:
        raise RuntimeError(f"cancellations did not complete: {dict(list(bad.items())[:5])}")
    return seen

