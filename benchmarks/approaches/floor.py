"""floor: the writes a cancellation promises, made by a bare client and nothing else: what any
operator keeping the promises needs at least, so ours is reported as a ratio to it."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.common import GRACE, SELECTOR, Obj
from benchmarks.harness import Harness
from benchmarks.world import GoneWatch
from necrocode.concurrency import bounded
from necrocode.kube import Kube, core_path, lease_path, nc_path
from necrocode.model import ANNOTATION_CANCELLED_BY, ANNOTATION_CANCELLED_BY_UID, BLOCKED_DISPATCH
from necrocode.settings import Settings


async def run(h: Harness, n: int) -> Obj:
    """The floor under any operator that keeps the issue's promises: a bare client (no status,
    no Events, no checks) making exactly the writes a cancellation must make, 100 in flight:
    per runner the graceful DELETE (mode Cancel without a cooperative window: the delete is the
    signal; Writes(signal=True) adds the annotation PATCH a window needs); once every pod is
    gone, per task its Cancelled status PUT and per lease its release PUT (listed objects)."""
    return await _run(h, n, "floor", budgeted=False)


async def run_budgeted(h: Harness, n: int) -> Obj:
    """The floor under the operator's API budget: the same writes, by a bare client whose
    requests in flight are held by the budget the operator would run with (its settings read
    from the same environment: by default the adaptive limit, 3 to 50 in flight). Why: the
    budget is what keeps the neighbours' latency within 2x (item 2), and on an API server whose
    CPU is the bottleneck it is also what makes each write dearer (fewer at once, so etcd,
    kwok and the API server's watchers batch less: docs/benchmarks.md, session 23); ours'
    ratio to this floor is the operator's own cost at the same gentleness, as the floor per
    mode (item 4) is the operator's cost for the same promises."""
    return await _run(h, n, "floorbudget", budgeted=True)


def budgeted_client(h: Harness) -> tuple[Kube, int]:
    """A bare client with the operator's budget, its settings read from the environment as the
    operator reads them (built as necrocode.handlers.lifecycle builds the operator's), and the
    most requests in flight it allows."""
    conf = Settings.from_env()
    return Kube(h.kube.creds, concurrency=conf.concurrency, timeout=120, qps=conf.api_qps, burst=conf.api_burst,
                adaptive=conf.adaptive_concurrency, tolerance=conf.adaptive_tolerance), conf.concurrency


async def _run(h: Harness, n: int, name: str, budgeted: bool) -> Obj:
    ns = await h.world.namespace(name)
    try:
        client, concurrency = budgeted_client(h) if budgeted else (None, h.raw_concurrency)
        watch, names, client = await h.armed(ns, n, full_world=True, client=client)
        try:
            cpu = h.cpu_start()
            t0 = time.perf_counter()
            prof = h.pprof(f"{name}-{n}")
            calls = await Writes(client, ns, concurrency).job(SELECTOR, names, watch)
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
    finishing: list[asyncio.Task[int]] = []
    signalled = asyncio.create_task(bounded([p for ps in pods_of.values() for p in ps], w.stop, concurrency))
    # each job finishes as soon as its own runners are gone
    await each_job_gone(watch, pods_of,
                        lambda j: finishing.append(asyncio.create_task(w.finish(f"necrocode.io/job={j}"))))
    await signalled
    return w.per_runner * sum(len(ps) for ps in pods_of.values()) + sum(await asyncio.gather(*finishing))


async def each_job_gone(watch: GoneWatch, pods_of: dict[str, list[str]], on_gone: Callable[[str], None]) -> None:
    """Call `on_gone(job)` for each job of `pods_of` as soon as the watch has seen the last of its
    runners DELETED (at once for a job with none); return once every job has been called."""
    job_of = {p: j for j, ps in pods_of.items() for p in ps}
    left = {j: len(ps) for j, ps in pods_of.items()}
    done = 0
    for j, k in left.items():
        if k == 0:
            on_gone(j)
            done += 1
    seen = 0
    while done < len(left):
        await watch.until(functools.partial(_more, watch, seen), timeout=900)
        for p in watch.gone[seen:]:
            job = job_of.get(p)
            if job is not None:
                left[job] -= 1
                if left[job] == 0:
                    on_gone(job)
                    done += 1
        seen = len(watch.gone)


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


CONTRACT_STEPS = ("Validate", "BlockDispatch", "ClassifyTasks", "SignalRunners", "TerminateRunners",
                  "UpdateTaskStates", "CleanupResources", "Verify")


async def many_contract(client: Kube, ns: str, pods_of: dict[str, list[str]], watch: GoneWatch, concurrency: int,
                        create_concurrency: int, final_status: Obj | None = None, creator: Kube | None = None) -> int:
    """The contract's floor for many jobs at once: what `many` writes, plus what the contract
    promises per cancellation and the floor leaves out, each once, by a bare client. Per job:
    the JobCancellation created (the request itself, `create_concurrency` at once, as ours'
    are); the job claimed with its dispatch blocked (one PATCH), its phase Cancelling (a status
    PATCH); the record's status before the first delete (the total, as ours makes it durable);
    the graceful DELETEs; once that job's runners are gone, its tasks and leases (as `many`),
    its phase Cancelled, an Event per task and one for the cancellation (the seed's "event
    emission" and "cancellation events"), and the record's final status (every step, the
    counts: `final_status`, the one ours wrote, when given). No reads besides the two lists
    the floor makes, no checks, no retries. Run with no operator serving the namespace.
    Per-task Events as the operator promises them: for the first NECROCODE_TASK_EVENTS_LIMIT
    tasks of a job by name (the operator's setting, read from the same environment; 100 by
    default) and one summary Event on the job for the rest, so one big job (item 3's sizes as
    1 x N) is not charged an Event per runner that no operator setting writes.
    `creator`: the client that creates the JobCancellations (default `client`): under the
    operator's budget the requests are still created by an unbudgeted client, as ours' are by
    the harness (a user's requests do not pass the operator's budget).
    Returns the API calls made; done when the last job's last write is."""
    limit = Settings.from_env().task_events_limit
    w = Writes(client, ns, concurrency)
    creating = asyncio.Semaphore(create_concurrency)
    gone = {j: asyncio.Event() for j in pods_of}
    calls = [0]

    async def call(req: Awaitable[Any]) -> Any:
        calls[0] += 1
        return await req

    async def one(job: str) -> None:
        rec_path = nc_path(ns, "jobcancellations", f"stop-{job}")
        async with creating:
            rec = await call((creator or client).create(nc_path(ns, "jobcancellations"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation",
                "metadata": {"name": f"stop-{job}"}, "spec": {"jobName": job, "reason": "benchmark"}}))
        job_path = nc_path(ns, "agentjobs", job)
        await call(client.merge_patch(job_path, {**BLOCKED_DISPATCH, "metadata": {
            **BLOCKED_DISPATCH["metadata"],
            "annotations": {ANNOTATION_CANCELLED_BY: f"stop-{job}", ANNOTATION_CANCELLED_BY_UID: rec["metadata"]["uid"]}}},
            meta_only=True))
        await call(client.merge_patch(nc_path(ns, "agentjobs", job, "status"), _job_phase("Cancelling", w.stamp),
                                      meta_only=True))
        pods = pods_of[job]
        await call(client.merge_patch(rec_path + "/status", {"status": {
            "phase": "Running", "progress": {"runnersTotal": len(pods)},
            "steps": [{"name": s, "state": "Succeeded" if i < 4 else "Running" if i == 4 else "Pending",
                       **({"startedAt": w.stamp} if i <= 4 else {})} for i, s in enumerate(CONTRACT_STEPS)]}},
            meta_only=True))
        await bounded(pods, w.stop, concurrency)
        calls[0] += len(pods)
        await gone[job].wait()
        finished = await w.finish(f"necrocode.io/job={job}")
        calls[0] += finished  # not `+= await`: that reads the count before it waits, and loses others' calls
        await call(client.merge_patch(nc_path(ns, "agentjobs", job, "status"), _job_phase("Cancelled", w.stamp),
                                      meta_only=True))
        task_names = sorted(p.rsplit("-", 1)[0] for p in pods)  # <job>-<task>-runner -> the task <job>-<task>
        summary = [call(_event(client, ns, "AgentJob", job, "TasksChanged"))] if len(task_names) > limit else []
        await asyncio.gather(*(call(_event(client, ns, "AgentTask", t, "Cancelled")) for t in task_names[:limit]),
                             *summary, call(_event(client, ns, "JobCancellation", f"stop-{job}", "Completed")))
        status = final_status or {"phase": "Completed", "progress": {"runnersTotal": len(pods),
                                                                     "runnersTerminated": len(pods)},
                                  "steps": [{"name": s, "state": "Succeeded", "startedAt": w.stamp,
                                             "finishedAt": w.stamp} for s in CONTRACT_STEPS]}
        await call(client.merge_patch(rec_path + "/status", {"status": status}, meta_only=True))

    follower = asyncio.create_task(each_job_gone(watch, pods_of, lambda j: gone[j].set()))
    try:
        await asyncio.gather(*(one(j) for j in pods_of))
    finally:
        follower.cancel()
    return calls[0]


def _job_phase(phase: str, stamp: str) -> Obj:
    """The job's phase and its Cancelled condition (what the contract's `is_job_cancelled` reads)."""
    return {"status": {"phase": phase, "conditions": [{
        "type": "Cancelled", "status": "True" if phase == "Cancelled" else "False", "reason": phase,
        "message": "benchmark", "lastTransitionTime": stamp}]}}


def _event(client: Kube, ns: str, kind: str, name: str, reason: str) -> Awaitable[Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return client.create(core_path(ns, "events"), {
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{name}."},
        "involvedObject": {"apiVersion": "necrocode.io/v1alpha1", "kind": kind, "name": name, "namespace": ns},
        "reason": reason, "message": f"{reason} by the floor: benchmark", "type": "Normal",
        "source": {"component": "floor"}, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1})
