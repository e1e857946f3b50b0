#!/usr/bin/env python3
"""Soak: hundreds of cancellations of every kind under random faults, each one checked.

    make soak [SOAK_ARGS="--cancellations 40 --seed 7"]
    .venv/bin/python -m benchmarks.soak --help        # from the repository's root

A local control plane of its own (etcd + kube-apiserver + kwok, state in a temp dir, stopped at
the end and on Ctrl-C), the CRDs and the admission policy, and the operator as a subprocess
(`python -m necrocode.main`) whose every connection to the API server goes through
tests/support/faultproxy.py on 127.0.0.1. Workers build small job worlds in a few namespaces (an
AgentJob of 2-8 AgentTasks with dependsOn, runner pods on kwok nodes that stop at once, slowly
or never, repo-slot Leases held by the runners, scratch and artifact ConfigMaps) and cancel each
in one way:

  job-graceful     JobCancellation, runners get their grace (force-deleted after it if they hang)
  job-force        JobCancellation force: true
  task-cascade     TaskCancellation of one unfinished task, cascade: true
  task-nocascade   TaskCancellation, cascade: false (dependents Blocked)
  dry-job          JobCancellation dryRun: true (nothing may change)
  dry-task         TaskCancellation dryRun: true
  duplicate        two JobCancellations of the same job at once (one acts, one is a duplicate)
  escalation       a slow graceful JobCancellation, then a forced one: the second escalates it
  task-then-job    a TaskCancellation, then a JobCancellation of the same job

Meanwhile a seeded fault loop (the seed is printed; --seed replays the same scenarios, worlds
and fault sequence) delays, resets and black-holes the operator's connections and SIGKILLs and
restarts the operator. Every cancellation is then checked against a model of its world:

  stuck         not terminal within its bound (its spec's grace + escalation + stuck timeout
                + --stuck-after)
  lost          a runner of a cancelled task still there, a Lease of one still held, a task
                that should be Cancelled/Blocked is not, a scratch object that should be gone is
                not, the job of a Completed JobCancellation not Cancelled, a dry run changed
                something
  double-acted  a task whose status.cancellation names another request (kind + uid) than
                the expected one, a duplicate that acted, two requests that both acted and
                Completed, the sum of tasksCancelled (or of runnersTotal, runnersTerminated,
                leasesReleased) over a job's requests larger than what they did
  miscounted    such a sum smaller than what was done (the work was done; its status says less)
  other         a phase other than Completed, an object outside the request's scope changed,
                a duplicate or escalation not recorded as such, a bystander job touched

Output: benchmarks/results/soak-<time>/ (git-ignored): results.json (counts per scenario and
per fault, times from creation to terminal with and without each fault, restarts, proxy
stats, every failure with the object's status), operator.log; a summary on stdout. An operator
that exits by itself, or stops serving, is restarted at once (as a kubelet would) and counted as
a crash. Exit code 1 when anything was stuck, lost, double-acted, miscounted or other, or the
operator crashed. Results of a run: docs/reliability.md, section Soak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import machine, percentile, say
from hack.localcluster import LocalCluster, bin_dir, free_port
from necrocode.concurrency import bounded
from necrocode.kube import ApiError, Gone, Kube, NotFound, core_path, lease_path, load_credentials, nc_path
from tests.support.faultproxy import FaultProxy, proxy_kubeconfig
from tests.support.kube import ClusterInfo, Kubectl, operator_env

REPO = Path(__file__).resolve().parent.parent
Obj = dict[str, Any]
NS_PREFIX = "soak-"
NODES = 3
TERMINAL = {"Completed", "PartiallyCompleted", "Failed", "Rejected"}
SCENARIOS: dict[str, tuple[float, int]] = {  # name: (weight, cancellations it creates)
    "job-graceful": (3.0, 1),
    "job-force": (2.0, 1),
    "task-cascade": (2.5, 1),
    "task-nocascade": (2.0, 1),
    "dry-job": (1.0, 1),
    "dry-task": (1.0, 1),
    "duplicate": (1.5, 2),
    "escalation": (1.0, 2),
    "task-then-job": (1.5, 2),
}
FAULTS = ("delay", "reset", "drop", "kill")
FAULT_WEIGHTS = {"delay": 3.0, "reset": 2.5, "drop": 2.0, "kill": 2.5}
CATEGORIES = ("stuck", "lost", "double_acted", "miscounted", "other")
STUCK_TIMEOUT = 4.0
"""NECROCODE_STUCK_TIMEOUT_SECONDS of the operator (as tests.support.kube.operator_env sets it)."""


# ============================================================================ the world model
@dataclass
class TaskSpec:
    tid: str
    deps: list[str]
    state: str  # Pending | Ready | Running | Done
    stop: str | None = None  # the runner's kwok stop mode, Running tasks only
    after: int | None = None
    scratch: bool = False
    artifact: bool = False


@dataclass
class World:
    ns: str
    job: str
    tasks: dict[str, TaskSpec]
    grace: int
    escalate: int

    @property
    def pool(self) -> str:
        return f"pool-{self.job}"

    def task_name(self, tid: str) -> str:
        return f"{self.job}-{tid}"

    def pod(self, tid: str) -> str:
        return f"{self.job}-{tid}-runner"

    def lease(self, tid: str) -> str:
        return f"{self.job}-slot-{tid}"

    @property
    def running(self) -> list[str]:
        return [t for t, s in self.tasks.items() if s.state == "Running"]

    @property
    def unfinished(self) -> list[str]:
        return [t for t, s in self.tasks.items() if s.state != "Done"]

    def descendants(self, root: str) -> set[str]:
        out: set[str] = set()
        frontier = [root]
        while frontier:
            cur = frontier.pop()
            for t, s in self.tasks.items():
                if cur in s.deps and t not in out:
                    out.add(t)
                    frontier.append(t)
        return out

    def configmaps(self) -> dict[str, tuple[str, str | None]]:
        """name -> (scratch | artifact, task id or None for the job's own)."""
        out: dict[str, tuple[str, str | None]] = {f"{self.job}-scratch": ("scratch", None),
                                                   f"{self.job}-artifact": ("artifact", None)}
        for t, s in self.tasks.items():
            if s.scratch:
                out[f"{self.job}-{t}-scratch"] = ("scratch", t)
            if s.artifact:
                out[f"{self.job}-{t}-artifact"] = ("artifact", t)
        return out


def make_world(rng: random.Random, ns: str, job: str, scenario: str) -> World:
    """2-8 tasks; each depends on 0-2 earlier ones; a task whose dependencies are all Done is
    Done, Running (with a runner, a held slot) or Pending/Ready, any other is Pending."""
    n = rng.randint(2, 8)
    tasks: dict[str, TaskSpec] = {}
    for i in range(n):
        tid = f"t{i}"
        deps = sorted(rng.sample(list(tasks), k=min(len(tasks), rng.choice([0, 1, 1, 2])))) if tasks else []
        if all(tasks[d].state == "Done" for d in deps):
            r = rng.random()
            state = "Done" if r < 0.2 else "Running" if r < 0.75 else rng.choice(["Pending", "Ready"])
        else:
            state = "Pending"
        tasks[tid] = TaskSpec(tid, deps, state)
    if all(s.state == "Done" for s in tasks.values()):
        tasks[f"t{n - 1}"].state = "Running"
    grace, escalate = rng.randint(2, 5), rng.randint(2, 3)
    if scenario == "escalation":  # the graceful one must still run when the forced one comes
        grace, escalate = 30, 30
        if not any(s.state == "Running" for s in tasks.values()):
            first_free = next(t for t, s in tasks.items() if not s.deps or all(tasks[d].state == "Done" for d in s.deps))
            tasks[first_free].state = "Running"
    for s in tasks.values():
        if s.state == "Running":
            s.stop = rng.choice(["immediate", "slow", "never"])
            if s.stop == "slow":
                s.after = rng.randint(1, max(1, grace - 1))
        if s.state in ("Running", "Done"):
            s.scratch = rng.random() < 0.6
            s.artifact = rng.random() < 0.6
    if scenario == "escalation":
        tasks[next(t for t, s in tasks.items() if s.state == "Running")].stop = "never"
    return World(ns, job, tasks, grace, escalate)


class Builder:
    """Creates a world through the harness's own (unproxied) client."""

    def __init__(self, kube: Kube):
        self.kube = kube

    async def retry(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        for attempt in range(8):
            try:
                return await fn()
            except ApiError as exc:
                if exc.status == 409 and attempt > 0:  # created by the attempt whose answer was lost
                    return None
                if exc.status not in (0, 409, 429, 500, 503, 504) or attempt == 7:
                    raise
                await asyncio.sleep(0.2 * 2 ** attempt)
        return None

    async def namespace(self, ns: str) -> None:
        await self.retry(lambda: self.kube.create(core_path(None, "namespaces"), {"metadata": {"name": ns}}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # pods need the default ServiceAccount
            try:
                await self.kube.get(core_path(ns, "serviceaccounts", "default"))
                return
            except NotFound:
                await asyncio.sleep(0.2)
        raise RuntimeError(f"no default ServiceAccount in {ns}")

    async def build(self, w: World) -> None:
        ns, kube = w.ns, self.kube
        await self.retry(lambda: kube.create(nc_path(ns, "agentjobs"), {
            "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentJob", "metadata": {"name": w.job},
            "spec": {"dispatch": {"blocked": False}}}))
        await self.retry(lambda: kube.merge_patch(nc_path(ns, "agentjobs", w.job, "status"),
                                                  {"status": {"phase": "Running"}}))

        async def task(s: TaskSpec) -> None:
            status: Obj = {"state": s.state}
            if s.state == "Running":
                labels = {"necrocode.io/job": w.job, "necrocode.io/task": s.tid, "necrocode.io/role": "runner",
                          "necrocode.io/kwok-stop": str(s.stop)}
                meta: Obj = {"name": w.pod(s.tid), "labels": labels}
                if s.after is not None:
                    meta["annotations"] = {"necrocode.io/kwok-stop-after-seconds": str(s.after)}
                await self.retry(lambda: kube.create(core_path(ns, "pods"), {
                    "apiVersion": "v1", "kind": "Pod", "metadata": meta,
                    "spec": {"nodeName": f"kwok-node-{sum(map(ord, s.tid)) % NODES}",
                             "terminationGracePeriodSeconds": 30, "automountServiceAccountToken": False,
                             "containers": [{"name": "runner", "image": "necrocode/runner:soak"}]}}))
                await self.retry(lambda: kube.create(lease_path(ns), {
                    "metadata": {"name": w.lease(s.tid), "labels": {
                        "necrocode.io/repo-pool": w.pool, "necrocode.io/job": w.job, "necrocode.io/task": s.tid}},
                    "spec": {"holderIdentity": w.pod(s.tid), "leaseDurationSeconds": 3600}}))
                status.update(runner=w.pod(s.tid), repoSlot=w.lease(s.tid))
            name = w.task_name(s.tid)
            await self.retry(lambda: kube.create(nc_path(ns, "agenttasks"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
                "metadata": {"name": name, "labels": {"necrocode.io/job": w.job, "necrocode.io/task": s.tid}},
                "spec": {"job": w.job, "taskId": s.tid, "dependsOn": s.deps}}))
            await self.retry(lambda: kube.merge_patch(nc_path(ns, "agenttasks", name, "status"), {"status": status}))

        async def configmap(item: tuple[str, tuple[str, str | None]]) -> None:
            name, (marker, tid) = item
            labels = {"necrocode.io/job": w.job, f"necrocode.io/{marker}": "true"}
            if tid:
                labels["necrocode.io/task"] = tid
            await self.retry(lambda: kube.create(core_path(ns, "configmaps"), {
                "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}))

        await asyncio.gather(bounded(list(w.tasks.values()), task, 8),
                             bounded(list(w.configmaps().items()), configmap, 8))
        await self.wait_running(w)

    async def wait_running(self, w: World, timeout: float = 90) -> None:  # noqa: ASYNC109
        want = len(w.running)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items, _ = await self.kube.list_all(core_path(w.ns, "pods"), label_selector=f"necrocode.io/job={w.job}")
            if sum(1 for p in items if (p.get("status") or {}).get("podIP")) >= want:
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"runners of {w.ns}/{w.job} not Running after {timeout}s")


async def snapshot(kube: Kube, w: World) -> dict[str, Any]:
    """What a cancellation may change, object by object (absent objects have no key)."""
    sel = f"necrocode.io/job={w.job}"
    job_path = nc_path(w.ns, "agentjobs", w.job)
    job, (tasks, _), (pods, _), (leases, _), (cms, _) = await asyncio.gather(
        kube.get(job_path), kube.list_all(nc_path(w.ns, "agenttasks"), label_selector=sel),
        kube.list_all(core_path(w.ns, "pods"), label_selector=sel, meta_only=True),
        kube.list_all(lease_path(w.ns), label_selector=f"necrocode.io/repo-pool={w.pool}"),
        kube.list_all(core_path(w.ns, "configmaps"), label_selector=sel, meta_only=True))
    out: dict[str, Any] = {}
    ann = job["metadata"].get("annotations") or {}
    out["job"] = {"phase": (job.get("status") or {}).get("phase"),
                  "blocked": bool(((job.get("spec") or {}).get("dispatch") or {}).get("blocked")),
                  "claimedBy": ann.get("necrocode.io/cancelled-by")}
    for t in tasks:
        st = t.get("status") or {}
        c = st.get("cancellation") or {}
        out[f"task/{t['metadata']['name']}"] = {
            "state": st.get("state"), "cancelledByUid": c.get("cancelledByUid"),
            "cancelledByKind": c.get("cancelledByKind"), "cancelledBy": c.get("cancelledBy"),
            "blockedByUid": st.get("blockedByUid")}
    for p in pods:
        m = p["metadata"]
        out[f"pod/{m['name']}"] = {"deleting": bool(m.get("deletionTimestamp")),
                                   "signalled": "necrocode.io/cancel-requested" in (m.get("annotations") or {})}
    for x in leases:
        labels = x["metadata"].get("labels") or {}
        out[f"lease/{x['metadata']['name']}"] = {"holder": (x.get("spec") or {}).get("holderIdentity"),
                                                  "job": labels.get("necrocode.io/job")}
    for c in cms:
        out[f"cm/{c['metadata']['name']}"] = True
    return out


# ============================================================================ the cancellations
@dataclass
class Rec:
    """One cancellation as the harness sees it (through its own watch)."""

    plural: str
    ns: str
    name: str
    uid: str = ""
    created: float | None = None
    terminal: float | None = None
    phase: str | None = None
    status: Obj = field(default_factory=dict)
    tick: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def seconds(self) -> float | None:
        return None if self.created is None or self.terminal is None else self.terminal - self.created


class Tracker:
    """One watch per kind over every namespace: the moment each cancellation turns terminal."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self.recs: dict[tuple[str, str, str], Rec] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def rec(self, plural: str, ns: str, name: str) -> Rec:
        key = (plural, ns, name)
        if key not in self.recs:
            self.recs[key] = Rec(plural, ns, name)
        return self.recs[key]

    def update(self, plural: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        if not str(meta.get("namespace", "")).startswith(NS_PREFIX):
            return
        r = self.rec(plural, meta["namespace"], meta["name"])
        r.uid = r.uid or str(meta.get("uid") or "")
        r.status = obj.get("status") or {}
        r.phase = r.status.get("phase")
        if r.phase in TERMINAL and r.terminal is None and r.created is not None:
            r.terminal = time.perf_counter()
        old, r.tick = r.tick, asyncio.Event()
        old.set()

    def start(self) -> None:
        for plural in ("jobcancellations", "taskcancellations"):
            self.tasks.append(asyncio.create_task(self._run(plural)))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _run(self, plural: str) -> None:
        path = nc_path(None, plural)
        rv = ""
        while True:
            try:
                if not rv:
                    items, rv = await self.kube.list_all(path)
                    for o in items:
                        self.update(plural, o)
                async for ev in self.kube.watch(path, resource_version=rv, timeout_seconds=120):
                    o = ev.get("object") or {}
                    rv = (o.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self.update(plural, o)
            except Gone:
                rv = ""
            except ApiError:
                await asyncio.sleep(0.5)

    async def refresh(self, r: Rec) -> None:
        with contextlib.suppress(ApiError):
            self.update(r.plural, await self.kube.get(nc_path(r.ns, r.plural, r.name)))

    async def wait(self, r: Rec, pred: Callable[[Rec], bool], timeout: float) -> bool:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not pred(r):
            left = deadline - time.monotonic()
            if left <= 0:
                await self.refresh(r)
                return pred(r)
            try:
                await asyncio.wait_for(r.tick.wait(), timeout=min(left, 10.0))
            except TimeoutError:
                await self.refresh(r)  # no news for a while: read it (a missed event)
        return True


def terminal(r: Rec) -> bool:
    return r.phase in TERMINAL


# ============================================================================ checks
@dataclass
class Req:
    role: str
    kind: str  # JobCancellation | TaskCancellation
    rec: Rec
    spec: Obj
    bound: float

    @property
    def plural(self) -> str:
        return "jobcancellations" if self.kind == "JobCancellation" else "taskcancellations"

    @property
    def ref(self) -> str:
        return f"{self.kind.lower()}/{self.rec.name}"

    @property
    def dry(self) -> bool:
        return bool(self.spec.get("dryRun"))


@dataclass
class Outcome:
    index: int
    scenario: str
    ns: str
    job: str
    tasks: int
    runners: int
    reqs: list[Req]
    problems: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def add(self, cat: str, msg: str) -> None:
        self.problems[cat].append(msg)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values()) and self.error is None


def _progress(r: Req) -> Obj:
    return dict(r.rec.status.get("progress") or {})


def check(o: Outcome, w: World, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Compare the world after the scenario's requests ended with what they should have done."""
    reqs = o.reqs
    for r in reqs:
        if r.rec.phase != "Completed":
            o.add("other", f"{r.ref}: phase {r.rec.phase} (expected Completed): {r.rec.status.get('message')}")
    if any(r.dry for r in reqs):
        for r in reqs:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            if changed:
                o.add("lost", f"dry run {r.ref} changed {changed[:6]}: "
                              + "; ".join(f"{k}: {before.get(k)} -> {after.get(k)}" for k in changed[:3]))
            p = _progress(r)
            if p.get("tasksCancelled") or p.get("runnersTerminated") or p.get("leasesReleased"):
                o.add("lost", f"dry run {r.ref} counted work: {p}")
            if not r.rec.status.get("plan"):
                o.add("other", f"dry run {r.ref}: no status.plan")
        return

    # who acts: a duplicate names the request that covers it
    dup_of = {r.rec.name: r.rec.status.get("duplicateOf") for r in reqs}
    actors = [r for r in reqs if not dup_of[r.rec.name]]
    dups = [r for r in reqs if dup_of[r.rec.name]]
    # a request that ended Failed or PartiallyCompleted leaves the job to the next one (design:
    # "no lock-out"): then the later one acts on what is left, and both may have cancelled tasks
    jc_actors = [r for r in actors if r.kind == "JobCancellation"]
    jc_actor = jc_actors[-1] if jc_actors else None
    jc_uids = {r.rec.uid for r in jc_actors}
    tc_actor = next((r for r in actors if r.kind == "TaskCancellation"), None)
    if o.scenario in ("duplicate", "escalation"):
        completed = [r for r in actors if r.rec.phase == "Completed"]
        if len(completed) > 1:
            o.add("double_acted", f"{len(completed)} of the 2 JobCancellations acted and Completed (duplicateOf: {dup_of})")
        elif not actors:
            o.add("other", f"neither JobCancellation acted (duplicateOf: {dup_of})")
        elif len(actors) > 1:
            o.notes.append("taken over after a request that did not complete")
    for d in dups:
        covering = next((r for r in reqs if d.rec.status.get("duplicateOf") == f"jobcancellation/{r.rec.name}"), None)
        if covering is None or covering is d:
            o.add("other", f"{d.ref}: duplicateOf {d.rec.status.get('duplicateOf')!r} names no acting request")
        p = _progress(d)
        acted = {k: v for k, v in p.items() if k in ("runnersTotal", "runnersTerminated", "tasksCancelled",
                                                     "tasksBlocked", "leasesReleased", "resourcesDeleted") and v}
        if acted:
            o.add("double_acted", f"duplicate {d.ref} acted: {acted}")
    if o.scenario == "escalation":
        graceful = next(r for r in reqs if r.role == "graceful")
        forced = next(r for r in reqs if r.role == "forced")
        if forced.rec.status.get("duplicateOf") != f"jobcancellation/{graceful.rec.name}":
            o.add("other", f"escalation: forced duplicateOf={forced.rec.status.get('duplicateOf')!r}")
        if "escalation_missed" not in o.notes:  # the graceful one had ended before the forced one came
            if forced.rec.status.get("escalated") != f"jobcancellation/{graceful.rec.name}":
                o.add("other", f"escalation: forced status.escalated={forced.rec.status.get('escalated')!r}")
            if graceful.rec.status.get("escalatedBy") != f"jobcancellation/{forced.rec.name}":
                o.add("other", f"escalation: graceful status.escalatedBy={graceful.rec.status.get('escalatedBy')!r}")

    # the model: task id -> (state, by uid, by kind, blocked-by uid)
    state: dict[str, tuple[str, str | None, str | None, str | None]] = {
        t: (s.state, None, None, None) for t, s in w.tasks.items()}
    cleaned: set[str] = set()
    artifacts_gone: set[str] = set()
    job_wide = False
    if tc_actor is not None:
        root = str(tc_actor.spec["taskId"])
        cascade = bool(tc_actor.spec.get("cascade", True))
        group = {root} | w.descendants(root)
        for t in group:
            if t == root or cascade:
                state[t] = ("Cancelled", tc_actor.rec.uid, "TaskCancellation", None)
            else:
                state[t] = ("Blocked", None, None, tc_actor.rec.uid)
        cleaned |= group  # a TaskCancellation always keeps artifacts (its spec has no preserveArtifacts)
    blocked_model = sum(1 for st in state.values() if st[0] == "Blocked")  # a later job cancellation cancels them
    if jc_actor is not None:
        for t, (st, *_rest) in list(state.items()):
            if st not in ("Done", "Cancelled"):
                state[t] = ("Cancelled", jc_actor.rec.uid, "JobCancellation", state[t][3])
        cleaned |= set(w.tasks)
        job_wide = True
        if not jc_actor.spec.get("preserveArtifacts", True):
            artifacts_gone |= set(w.tasks) | {"(job)"}
    cancelled = {t for t, s in state.items() if s[0] == "Cancelled"}

    # tasks
    for t, (want, uid, kind, blocked) in state.items():
        key = f"task/{w.task_name(t)}"
        got = after.get(key) or {}
        if want == "Cancelled":
            if got.get("state") != "Cancelled":
                o.add("lost", f"task {t}: {got.get('state')} (expected Cancelled by {kind} {uid})")
            elif got.get("cancelledByKind") != kind or (got.get("cancelledByUid") != uid and not (
                    kind == "JobCancellation" and got.get("cancelledByUid") in jc_uids)):
                o.add("double_acted", f"task {t}: cancelled by {got.get('cancelledByKind')}/{got.get('cancelledBy')} "
                                      f"uid {got.get('cancelledByUid')} (expected {kind} uid {uid})")
        elif want == "Blocked":
            if got.get("state") != "Blocked":
                o.add("lost", f"task {t}: {got.get('state')} (expected Blocked)")
            elif got.get("blockedByUid") != blocked:
                o.add("double_acted", f"task {t}: blocked by uid {got.get('blockedByUid')} (expected {blocked})")
        elif got != before.get(key):
            o.add("other", f"task {t} outside the request's scope changed: {before.get(key)} -> {got}")
    # runners and slots
    for t in w.running:
        pod, lease = f"pod/{w.pod(t)}", f"lease/{w.lease(t)}"
        held = after.get(lease) or {}
        if t in cancelled:
            if pod in after:
                o.add("lost", f"runner {w.pod(t)} of cancelled task {t} still there: {after[pod]}")
            if held.get("holder") or held.get("job"):
                o.add("lost", f"slot {w.lease(t)} of cancelled task {t} still held: {held}")
        else:
            if after.get(pod) != before.get(pod):
                o.add("other", f"runner {w.pod(t)} of task {t} (not cancelled) changed: {before.get(pod)} -> {after.get(pod)}")
            if held != before.get(lease):
                o.add("other", f"slot {w.lease(t)} of task {t} (not cancelled) changed: {before.get(lease)} -> {held}")
    # scratch and artifacts
    for name, (marker, tid) in w.configmaps().items():
        present = f"cm/{name}" in after
        scope = tid in cleaned if tid else job_wide
        if marker == "scratch":
            gone = scope
        else:
            gone = (tid in artifacts_gone) if tid else "(job)" in artifacts_gone
        if gone and present:
            o.add("lost", f"{marker} configmap {name} still there")
        if not gone and not present:
            o.add("other", f"{marker} configmap {name} deleted (outside the scope or preserved)")
    # the job
    job = after.get("job") or {}
    if jc_actor is not None:
        if job.get("phase") != "Cancelled":
            o.add("lost", f"job {w.job}: phase {job.get('phase')} after {jc_actor.ref} {jc_actor.rec.phase}")
        if not job.get("blocked"):
            o.add("lost", f"job {w.job}: dispatch not blocked after {jc_actor.ref}")
    elif job.get("phase") != "Running" or job.get("blocked"):
        o.add("other", f"job {w.job} changed by a task cancellation: {before.get('job')} -> {job}")

    # counts across the job's records: each task, runner and slot counted once
    acting = [r for r in reqs if not r.dry]
    uids = {r.rec.uid for r in acting}
    by_records = sum(int(_progress(r).get("tasksCancelled") or 0) for r in acting)
    done_by_them = sum(1 for k, v in after.items() if k.startswith("task/") and v.get("state") == "Cancelled"
                       and v.get("cancelledByUid") in uids)
    if by_records != done_by_them:
        o.add("double_acted" if by_records > done_by_them else "miscounted",
              f"sum of tasksCancelled {by_records} != {done_by_them} tasks Cancelled by these requests")
    blocked_records = sum(int(_progress(r).get("tasksBlocked") or 0) for r in acting)
    if blocked_records != blocked_model:
        o.add("double_acted" if blocked_records > blocked_model else "miscounted",
              f"sum of tasksBlocked {blocked_records} != {blocked_model} tasks blocked")
    runners_cancelled = sum(1 for t in w.running if t in cancelled)
    for what in ("runnersTerminated", "runnersTotal", "leasesReleased"):
        total = sum(int(_progress(r).get(what) or 0) for r in acting)
        if total != runners_cancelled:
            o.add("double_acted" if total > runners_cancelled else "miscounted",
                  f"sum of {what} {total} != {runners_cancelled} runners/slots of cancelled tasks")
    if len(actors) == 1 and jc_actor is not None and o.scenario != "escalation":
        p = _progress(jc_actor)
        never = sum(1 for t in w.running if w.tasks[t].stop == "never")
        n_forced = int(p.get("runnersForced") or 0)
        if jc_actor.spec.get("force"):
            if n_forced != runners_cancelled:
                o.add("other", f"{jc_actor.ref} force: runnersForced {n_forced} != {runners_cancelled}")
        elif n_forced != never:
            o.notes.append(f"runnersForced {n_forced} != {never} runners that never stop")


# ============================================================================ the operator
class Operator:
    """The operator subprocess, through the proxy; SIGKILL and start again at will."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str]):
        self.kubeconfig, self.log, self.env = kubeconfig, log, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.log_offset = 0

    def start(self) -> float:
        """Start and wait until /metrics answers; returns the seconds it took."""
        t0 = time.monotonic()
        self.port = free_port()
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        info = ClusterInfo(kubeconfig=self.kubeconfig, local=True, bins=None)
        env = {**os.environ, **operator_env(info, self.port), "PYTHONPATH": str(REPO / "operator"), **self.env}
        self.starts += 1
        with self.log.open("ab") as f:
            f.write(f"=== soak: operator start #{self.starts} at {time.strftime('%H:%M:%S')}\n".encode())
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "necrocode.main", "--namespace", f"{NS_PREFIX}*", "--liveness", ""],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                    r.read()
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("operator /metrics did not come up")

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stopped_serving(self) -> bool:
        """kopf logged its own stop ("operator stopped") though nobody asked it to: its root task
        failed; the process may linger without serving anything (no liveness endpoint here)."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_offset)
                return b'"event":"operator stopped"' in f.read()
        except OSError:
            return False


# ============================================================================ faults
@dataclass
class Episode:
    kind: str
    start: float
    end: float
    params: Obj


class Faults:
    """A seeded loop of faults: proxy delay, reset, black-hole drop, operator SIGKILL + restart."""

    def __init__(self, rng: random.Random, proxy: FaultProxy, op: Operator, kinds: list[str],
                 gap: tuple[float, float]):
        self.rng, self.proxy, self.op, self.kinds, self.gap = rng, proxy, op, kinds, gap
        self.episodes: list[Episode] = []
        self.restart_seconds: list[float] = []
        self.crashes: list[Obj] = []
        self.active: Episode | None = None
        self._stop = asyncio.Event()
        self._operator = asyncio.Lock()  # one of the fault loop and the watchdog restarts it

    async def watchdog(self) -> None:
        """The operator exiting by itself (not killed here), or logging its own stop while the
        process lingers, is restarted at once, as a kubelet (or its liveness probe) would, and
        recorded as a crash (an episode of kind "crash": what it cost is measured too)."""
        while not self._stop.is_set():
            await asyncio.sleep(0.5)
            async with self._operator:
                if self.op.proc is None:
                    continue
                alive = self.op.alive()
                if alive and not self.op.stopped_serving():
                    continue
                start = time.perf_counter()
                how = "stopped serving (kopf logged 'operator stopped'; the process lingered)" if alive else "exited"
                self.op.kill()
                code = self.op.proc.returncode
                say(f"  the operator {how} by itself" + ("" if alive else f" (code {code})") + "; restarting it")
                took = await asyncio.to_thread(self.op.start)
                self.crashes.append({"at": time.strftime("%H:%M:%S"), "how": how, "exit_code": None if alive else code,
                                     "start_seconds": round(took, 2)})
                self.episodes.append(Episode("crash", start, time.perf_counter(), {"how": how}))

    def stop(self) -> None:
        self._stop.set()

    async def _pause(self, seconds: float) -> bool:
        """Sleep; True when asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return self._stop.is_set()

    async def run(self) -> None:
        if not self.kinds:
            return
        weights = [FAULT_WEIGHTS[k] for k in self.kinds]
        while not await self._pause(self.rng.uniform(*self.gap)):
            kind = self.rng.choices(self.kinds, weights)[0]
            params: Obj = {}
            start = time.perf_counter()
            self.active = Episode(kind, start, float("inf"), params)
            try:
                if kind == "kill":
                    params["down_seconds"] = round(self.rng.uniform(0.0, 3.0), 2)
                    async with self._operator:
                        self.op.kill()
                        await asyncio.sleep(params["down_seconds"])  # not cut short: the operator must come back
                        took = await asyncio.to_thread(self.op.start)
                    self.restart_seconds.append(took)
                    params["start_seconds"] = round(took, 2)
                else:
                    hold = {"delay": (3.0, 8.0), "reset": (0.5, 2.5), "drop": (2.0, 5.0)}[kind]
                    params["hold_seconds"] = round(self.rng.uniform(*hold), 2)
                    if kind == "delay":
                        params.update(seconds=round(self.rng.uniform(0.05, 0.4), 3),
                                      per=self.rng.choice(["chunk", "connection"]),
                                      probability=round(self.rng.uniform(0.5, 1.0), 2))
                        await asyncio.to_thread(self.proxy.delay, params["seconds"], params["per"],
                                                params["probability"])
                    elif kind == "reset":
                        params["probability"] = round(self.rng.uniform(0.3, 1.0), 2)
                        await asyncio.to_thread(self.proxy.reset, params["probability"])
                    else:
                        params["probability"] = round(self.rng.uniform(0.2, 1.0), 2)
                        await asyncio.to_thread(self.proxy.drop, params["probability"])
                    await asyncio.sleep(params["hold_seconds"])
                    await asyncio.to_thread(self.proxy.passthrough)
            finally:
                self.active = None
                self.episodes.append(Episode(kind, start, time.perf_counter(), params))


# ============================================================================ scenarios
@dataclass
class Plan:
    index: int
    scenario: str
    seed: int


def plan_scenarios(rng: random.Random, cancellations: int) -> list[Plan]:
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][0] for n in names]
    out: list[Plan] = []
    total = 0
    while total < cancellations:
        name = rng.choices(names, weights)[0]
        out.append(Plan(len(out), name, rng.randrange(2**31)))
        total += SCENARIOS[name][1]
    return out


class Soak:
    def __init__(self, kube: Kube, tracker: Tracker, namespaces: list[str], stuck_after: float):
        self.kube, self.tracker, self.namespaces, self.stuck_after = kube, tracker, namespaces, stuck_after
        self.builder = Builder(kube)
        self.outcomes: list[Outcome] = []

    def bound(self, spec: Obj) -> float:
        grace = 0 if spec.get("force") else int(spec.get("gracePeriodSeconds", 30))
        return grace + int(spec.get("escalateAfterSeconds", 10)) + STUCK_TIMEOUT + self.stuck_after

    async def create(self, o: Outcome, role: str, kind: str, name: str, spec: Obj) -> Req:
        plural = "jobcancellations" if kind == "JobCancellation" else "taskcancellations"
        rec = self.tracker.rec(plural, o.ns, name)
        rec.created = time.perf_counter()
        obj = await self.builder.retry(lambda: self.kube.create(nc_path(o.ns, plural), {
            "apiVersion": "necrocode.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}))
        if obj is None:  # created by a retried attempt: read its uid
            obj = await self.kube.get(nc_path(o.ns, plural, name))
        rec.uid = str(obj["metadata"]["uid"])
        if rec.phase in TERMINAL and rec.terminal is None:
            rec.terminal = time.perf_counter()
        req = Req(role, kind, rec, spec, self.bound(spec))
        o.reqs.append(req)
        return req

    async def wait_all(self, o: Outcome) -> bool:
        """Every request terminal within its bound (from its creation); the late ones are stuck."""
        ok = True
        for r in o.reqs:
            assert r.rec.created is not None
            left = r.bound - (time.perf_counter() - r.rec.created)
            if not await self.tracker.wait(r.rec, terminal, max(0.0, left)):
                ok = False
                o.add("stuck", f"{r.ref} not terminal {r.bound:.0f}s after its creation: phase {r.rec.phase}, "
                               f"steps {[(s.get('name'), s.get('state')) for s in r.rec.status.get('steps', [])]}")
        return ok

    async def run(self, p: Plan) -> Outcome:
        rng = random.Random(p.seed)
        ns = self.namespaces[p.index % len(self.namespaces)]
        job = f"j{p.index:04d}"
        w = make_world(rng, ns, job, p.scenario)
        o = Outcome(p.index, p.scenario, ns, job, len(w.tasks), len(w.running), [])
        self.outcomes.append(o)
        try:
            await self.builder.build(w)
            before = await snapshot(self.kube, w)
            await self.act(o, w, rng)
            if await self.wait_all(o):
                check(o, w, before, await snapshot(self.kube, w))
        except Exception as exc:  # the harness's own failure: reported, the soak goes on
            o.error = f"{type(exc).__name__}: {exc}"[:500]
            say(f"  scenario {p.index} ({p.scenario}) harness error: {o.error}")
        return o

    def spec(self, w: World, rng: random.Random, **extra: Any) -> Obj:
        spec: Obj = {"jobName": w.job, "reason": "soak", "gracePeriodSeconds": w.grace,
                     "escalateAfterSeconds": w.escalate}
        spec.update(extra)
        return spec

    async def act(self, o: Outcome, w: World, rng: random.Random) -> None:
        s = o.scenario
        jc, tc = "JobCancellation", "TaskCancellation"
        target = rng.choice(w.unfinished)
        keep = rng.random() >= 0.2  # 1 in 5 single JobCancellations deletes the artifacts too
        if s == "job-graceful":
            await self.create(o, "job", jc, f"{w.job}-jc", self.spec(w, rng, preserveArtifacts=keep))
        elif s == "job-force":
            await self.create(o, "job", jc, f"{w.job}-jc", self.spec(w, rng, force=True, preserveArtifacts=keep))
        elif s in ("task-cascade", "task-nocascade"):
            await self.create(o, "task", tc, f"{w.job}-tc", self.spec(w, rng, taskId=target, cascade=s == "task-cascade"))
        elif s == "dry-job":
            await self.create(o, "dry", jc, f"{w.job}-jc", self.spec(w, rng, dryRun=True, force=rng.random() < 0.3))
        elif s == "dry-task":
            await self.create(o, "dry", tc, f"{w.job}-tc", self.spec(
                w, rng, taskId=target, cascade=rng.random() < 0.5, dryRun=True))
        elif s == "duplicate":
            await self.create(o, "first", jc, f"{w.job}-jc", self.spec(w, rng))
            await self.create(o, "second", jc, f"{w.job}-jc2", self.spec(w, rng))
        elif s == "escalation":
            first = await self.create(o, "graceful", jc, f"{w.job}-jc", self.spec(w, rng))

            def terminating(r: Rec) -> bool:
                steps = {x.get("name"): x.get("state") for x in r.status.get("steps") or []}
                return steps.get("TerminateRunners") == "Running" or terminal(r)

            await self.tracker.wait(first.rec, terminating, first.bound)
            if terminal(first.rec):
                o.notes.append("escalation_missed")
            await self.create(o, "forced", jc, f"{w.job}-jc2", self.spec(w, rng, force=True))
        elif s == "task-then-job":
            await self.create(o, "task", tc, f"{w.job}-tc", self.spec(w, rng, taskId=target,
                                                                       cascade=rng.random() < 0.5))
            await asyncio.sleep(rng.uniform(0.0, 2.0))
            await self.create(o, "job", jc, f"{w.job}-jc", self.spec(w, rng))
        else:  # pragma: no cover
            raise ValueError(s)


# ============================================================================ bystanders
async def bystanders(builder: Builder, namespaces: list[str]) -> list[World]:
    """In each namespace a running job nobody cancels: it must end the soak as it began."""
    out = []
    for ns in namespaces:
        w = World(ns, "bystander", {"a": TaskSpec("a", [], "Running", "immediate", scratch=True, artifact=True),
                                    "b": TaskSpec("b", ["a"], "Pending")}, 30, 10)
        await builder.build(w)
        out.append(w)
    return out


# ============================================================================ report
def stats(xs: list[float]) -> Obj:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(statistics.median(xs), 2), "p95": round(percentile(xs, 95) or 0, 2),
            "max": round(max(xs), 2)}


def overlaps(r: Rec, ep: Episode) -> bool:
    if r.created is None:
        return False
    end = r.terminal if r.terminal is not None else time.perf_counter()
    return r.created <= ep.end and ep.start <= end


def report(outcomes: list[Outcome], episodes: list[Episode], kinds: Iterable[str]) -> Obj:
    kinds = list(kinds)
    per_scenario: dict[str, Obj] = {}
    rows: list[tuple[str, str, float | None, set[str], Outcome]] = []  # (label, scenario, seconds, faults, outcome)
    for o in outcomes:
        for r in o.reqs:
            hit = {ep.kind for ep in episodes if overlaps(r.rec, ep)}
            rows.append((f"{o.scenario}/{r.role}", o.scenario, r.rec.seconds, hit, o))
    for name in SCENARIOS:
        mine = [o for o in outcomes if o.scenario == name]
        secs = [s for (_, sc, s, _, _) in rows if sc == name and s is not None]
        per_scenario[name] = {
            "scenarios": len(mine), "cancellations": sum(len(o.reqs) for o in mine),
            "ok": sum(1 for o in mine if o.ok),
            **{c: sum(len(o.problems[c]) for o in mine) for c in CATEGORIES},
            "harness_errors": sum(1 for o in mine if o.error),
            "seconds": stats(secs),
            "seconds_by_fault": {k: stats([s for (_, sc, s, h, _) in rows if sc == name and s is not None and k in h])
                                 for k in kinds} | {
                "none": stats([s for (_, sc, s, h, _) in rows if sc == name and s is not None and not h])},
        }
    # per label baseline: the median of the cancellations no fault touched
    base: dict[str, float] = {}
    for label in {x[0] for x in rows}:
        clean = [s for (lb, _, s, h, _) in rows if lb == label and s is not None and not h]
        if clean:
            base[label] = statistics.median(clean)
    matrix: dict[str, dict[str, int]] = {}
    cost: dict[str, Obj] = {}
    for k in [*kinds, "none"]:
        matrix[k] = {name: sum(1 for (_, sc, _, h, _) in rows if sc == name and ((k in h) if k != "none" else not h))
                     for name in SCENARIOS}
        if k == "none":
            continue
        extra_any = [s - base[lb] for (lb, _, s, h, _) in rows if s is not None and k in h and lb in base]
        extra_only = [s - base[lb] for (lb, _, s, h, _) in rows if s is not None and h == {k} and lb in base]
        cost[k] = {"episodes": sum(1 for ep in episodes if ep.kind == k),
                   "cancellations_hit": sum(1 for (_, _, _, h, _) in rows if k in h),
                   "extra_seconds_any": stats(extra_any), "extra_seconds_only_this_fault": stats(extra_only)}
    totals = {c: sum(len(o.problems[c]) for o in outcomes) for c in CATEGORIES}
    return {"per_scenario": per_scenario, "fault_matrix": matrix, "fault_cost": cost, "baseline_median_seconds":
            {k: round(v, 2) for k, v in sorted(base.items())}, "totals": totals,
            "cancellations": sum(len(o.reqs) for o in outcomes), "scenarios": len(outcomes),
            "harness_errors": sum(1 for o in outcomes if o.error),
            "failed_scenarios": sum(1 for o in outcomes if not o.ok)}


def table(rep: Obj, kinds: list[str]) -> str:
    lines = ["", f"{'scenario':<15} {'scen':>5} {'canc':>5} {'ok':>5} {'stuck':>5} {'lost':>5} {'dbl':>5} {'count':>5}"
             f" {'other':>5} {'med s':>7} {'p95 s':>7} {'max s':>7}"]
    for name, r in rep["per_scenario"].items():
        s = r["seconds"]
        lines.append(f"{name:<15} {r['scenarios']:>5} {r['cancellations']:>5} {r['ok']:>5} {r['stuck']:>5} {r['lost']:>5}"
                     f" {r['double_acted']:>5} {r['miscounted']:>5} {r['other']:>5} {s.get('median', '-'):>7}"
                     f" {s.get('p95', '-'):>7} {s.get('max', '-'):>7}")
    t = rep["totals"]
    lines.append(f"total: {rep['cancellations']} cancellations in {rep['scenarios']} scenarios; stuck {t['stuck']}, "
                 f"lost {t['lost']}, double-acted {t['double_acted']}, miscounted {t['miscounted']}, other {t['other']}, "
                 f"harness errors {rep['harness_errors']}")
    lines.append("")
    lines.append("fault matrix (cancellations whose lifetime overlapped the fault):")
    lines.append(f"{'fault':<7} " + " ".join(f"{n[:14]:>14}" for n in SCENARIOS))
    for k, row in rep["fault_matrix"].items():
        lines.append(f"{k:<7} " + " ".join(f"{row[n]:>14}" for n in SCENARIOS))
    lines.append("")
    lines.append("what a fault costs (seconds beyond the median of untouched cancellations of the same kind):")
    lines.append(f"{'fault':<7} {'episodes':>8} {'hit':>5} {'med+':>7} {'p95+':>7}   {'only: n':>7} {'med+':>7} {'p95+':>7}")
    for k in kinds:
        c = rep["fault_cost"][k]
        a, b = c["extra_seconds_any"], c["extra_seconds_only_this_fault"]
        lines.append(f"{k:<7} {c['episodes']:>8} {c['cancellations_hit']:>5} {a.get('median', '-'):>7} {a.get('p95', '-'):>7}"
                     f"   {b['n']:>7} {b.get('median', '-'):>7} {b.get('p95', '-'):>7}")
    return "\n".join(lines)


def outcome_json(o: Outcome, episodes: list[Episode], t0: float) -> Obj:
    return {"index": o.index, "scenario": o.scenario, "namespace": o.ns, "job": o.job, "tasks": o.tasks,
            "runners": o.runners, "ok": o.ok, "error": o.error, "notes": o.notes,
            "problems": {k: v for k, v in o.problems.items() if v},
            "requests": [{"role": r.role, "kind": r.kind, "name": r.rec.name, "uid": r.rec.uid,
                          "phase": r.rec.phase, "seconds": None if r.rec.seconds is None else round(r.rec.seconds, 3),
                          "created_at_seconds": None if r.rec.created is None else round(r.rec.created - t0, 2),
                          "faults": sorted({ep.kind for ep in episodes if overlaps(r.rec, ep)}),
                          "spec": r.spec, **({} if o.ok else {"status": r.rec.status})} for r in o.reqs]}


# ============================================================================ main
async def amain(a: argparse.Namespace, out: Path, kubeconfig: Path, proxy: FaultProxy, op: Operator) -> Obj:
    kube = Kube(load_credentials(str(kubeconfig)), concurrency=64, timeout=30)
    tracker = Tracker(kube)
    namespaces = [f"{NS_PREFIX}{i}" for i in range(a.namespaces)]
    soak = Soak(kube, tracker, namespaces, a.stuck_after)
    for ns in namespaces:
        await soak.builder.namespace(ns)
    standing = await bystanders(soak.builder, namespaces)
    standing_before = {w.ns: await snapshot(kube, w) for w in standing}
    tracker.start()
    rng = random.Random(a.seed)
    plans = plan_scenarios(rng, a.cancellations)
    kinds = [k for k in a.faults.split(",") if k]
    faults = Faults(random.Random(a.seed ^ 0x5EED), proxy, op, kinds, (a.fault_gap_min, a.fault_gap_max))
    fault_task = asyncio.create_task(faults.run())
    dog = asyncio.create_task(faults.watchdog())
    started = time.perf_counter()
    queue: asyncio.Queue[Plan] = asyncio.Queue()
    for p in plans:
        queue.put_nowait(p)
    done = 0
    capped = False

    async def worker() -> None:
        nonlocal done, capped
        while not queue.empty():
            if time.perf_counter() - started > a.duration:
                capped = True
                return
            p = queue.get_nowait()
            await soak.run(p)
            done += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            bad = sum(1 for o in soak.outcomes if not o.ok)
            say(f"  {done}/{len(plans)} scenarios done, {sum(len(o.reqs) for o in soak.outcomes)} cancellations "
                f"created, {bad} with problems, {len(faults.episodes)} faults, {op.starts - 1} restarts "
                f"({len(faults.crashes)} after the operator crashed)")

    ticker = asyncio.create_task(progress())
    say(f"{len(plans)} scenarios ({a.cancellations} cancellations) on {a.concurrency} workers, faults: "
        f"{','.join(kinds) or 'none'}")
    try:
        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
    finally:
        faults.stop()
        with contextlib.suppress(Exception):
            await fault_task
        with contextlib.suppress(Exception):
            await dog
        ticker.cancel()
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(proxy.passthrough)
    if not op.alive():
        await asyncio.to_thread(op.start)
    # the global check: everything created ends, within a bound, with faults lifted
    late: list[str] = []
    for o in soak.outcomes:
        for r in o.reqs:
            if not terminal(r.rec):
                ok = await tracker.wait(r.rec, terminal, a.drain_timeout)
                late.append(f"{r.ref} in {o.ns}: " + (f"terminal ({r.rec.phase}) only after the drain wait" if ok
                                                       else f"still {r.rec.phase} after the drain wait"))
    standing_after = {w.ns: await snapshot(kube, w) for w in standing}
    bystander_problems = [f"{ns}: {k}: {standing_before[ns].get(k)} -> {v.get(k)}"
                          for ns, v in standing_after.items() for k in set(v) | set(standing_before[ns])
                          if v.get(k) != standing_before[ns].get(k)]
    await tracker.stop()
    await kube.close()
    kinds = [*kinds, "crash"]  # the operator exiting by itself, restarted by the watchdog
    rep = report(soak.outcomes, faults.episodes, kinds)
    rep["totals"]["other"] += len(bystander_problems)
    rep["bystander_problems"] = bystander_problems
    rep["late"] = late
    results: Obj = {
        "seed": a.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - elapsed)),
        "wall_seconds": round(elapsed, 1), "capped_by_duration": capped, "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "operator_env": op.env, "operator_restarts": op.starts - 1, "operator_crashes": faults.crashes,
        "operator_restart_seconds": stats(faults.restart_seconds), "proxy_stats": asdict(proxy.stats),
        "fault_episodes": [{"kind": e.kind, "at_seconds": round(e.start - started, 2),
                            "seconds": round(e.end - e.start, 2), **e.params} for e in faults.episodes],
        **rep, "outcomes": [outcome_json(o, faults.episodes, started) for o in soak.outcomes]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(rep, kinds))
    print(f"\nseed {a.seed}; {elapsed:.0f}s; operator restarts {op.starts - 1}, of which {len(faults.crashes)} after "
          f"it exited by itself; proxy {asdict(proxy.stats)}")
    for c in faults.crashes:
        print(f"FAILED the operator {c['how']} at {c['at']} (exit code {c['exit_code']}); see {op.log}")
    for o in soak.outcomes:
        if not o.ok:
            print(f"FAILED scenario {o.index} {o.scenario} {o.ns}/{o.job}: {o.error or ''} "
                  + json.dumps({k: v for k, v in o.problems.items() if v})[:1500])
    for line in bystander_problems + late:
        print(f"FAILED {line}")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cancellations", type=int, default=500, help="cancellation requests to create (default 500)")
    ap.add_argument("--concurrency", type=int, default=8, help="scenarios in flight at once (default 8)")
    ap.add_argument("--duration", type=float, default=1800,
                    help="seconds after which no new scenario starts (the ones in flight finish; default 1800)")
    ap.add_argument("--seed", type=int, default=None, help="replay a run (default: random, printed)")
    ap.add_argument("--namespaces", type=int, default=4, help=f"namespaces {NS_PREFIX}0.. (default 4)")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"fault kinds, a subset of {','.join(FAULTS)} ('' for none)")
    ap.add_argument("--fault-gap-min", type=float, default=2.0, help="seconds between faults: at least (default 2)")
    ap.add_argument("--fault-gap-max", type=float, default=10.0, help="seconds between faults: at most (default 10)")
    ap.add_argument("--stuck-after", type=float, default=150.0,
                    help="seconds beyond a request's own grace + escalation + stuck timeout before it counts as "
                         "stuck (default 150: a black-holed kopf watch reconnects after 70 s of silence)")
    ap.add_argument("--drain-timeout", type=float, default=300.0,
                    help="at the end, how long to wait for a request not yet terminal (default 300)")
    ap.add_argument("--request-timeout", type=float, default=5.0,
                    help="the operator's NECROCODE_REQUEST_TIMEOUT_SECONDS (default 5: a black-holed request "
                         "is given up after 5 s, not 30)")
    ap.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the operator (repeat)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results/soak-<time>)")
    a = ap.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 2**31)
    unknown = {k for k in a.faults.split(",") if k} - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults: {', '.join(sorted(unknown))}")
    out = a.out or REPO / "benchmarks" / "results" / time.strftime("soak-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    say(f"soak seed {a.seed} (replay: --seed {a.seed}); results in {out}")
    state = Path(tempfile.mkdtemp(prefix="necrocode-soak-"))
    cluster = LocalCluster(dir=state / "cluster", nodes=NODES, tie_to_parent=True, bins=bin_dir())
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    proxy: FaultProxy | None = None
    op: Operator | None = None
    code = 0
    try:
        kubeconfig = cluster.up()
        Kubectl(kubeconfig).install_crds()
        say(f"control plane up in {time.monotonic() - started:.0f}s ({state})")
        proxy = FaultProxy("127.0.0.1", cluster.ports["apiserver"], seed=a.seed).start()
        proxied = proxy_kubeconfig(kubeconfig, state / "proxied.kubeconfig", proxy)
        env = {
            # the operator's own retry policy (not conftest's fail-fast one): a fault of a few
            # seconds must be ridden out, which is what the soak measures
            "NECROCODE_RETRY_ATTEMPTS": "5", "NECROCODE_RETRY_BASE_SECONDS": "0.5",
            "NECROCODE_REQUEST_TIMEOUT_SECONDS": str(a.request_timeout),
            "NECROCODE_STUCK_TIMEOUT_SECONDS": str(STUCK_TIMEOUT),
            **dict(kv.split("=", 1) for kv in a.operator_env)}
        op = Operator(proxied, out / "operator.log", env)
        op.start()
        results = asyncio.run(amain(a, out, kubeconfig, proxy, op))
        t = results["totals"]
        code = 1 if any(t.values()) or results["harness_errors"] or results["late"] or results["operator_crashes"] else 0
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        code = 130
    finally:
        if op is not None:
            op.stop()
        if proxy is not None:
            proxy.stop()
        cluster.down()
        with contextlib.suppress(OSError):
            import shutil
            shutil.rmtree(state)
    say(f"done in {time.monotonic() - started:.0f}s (exit {code}); results in {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
