"""RunnerTerminator: signal runner pods, delete them with their grace period, follow them with
one label-selector watch, and force-delete those still there when the grace (plus the
escalation delay) has run out (seed 3, 8.2, 11.2).

The deadlines come from each pod's own deletionTimestamp (planning.runner_clock), so a
terminator started again after an operator restart picks up exactly where the last one was.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from necrocode import metrics
from necrocode.clock import Clock
from necrocode.concurrency import bounded
from necrocode.kube import ApiError, Gone, Kube, NotFound, TransientError, core_path
from necrocode.logs import Bound
from necrocode.model import ANNOTATION_CANCEL_REQUESTED, LABEL_TASK, iso
from necrocode.planning import RunnerClock, escalation_delay, next_wakeup, runner_clock

Obj = dict[str, Any]


@dataclass
class Termination:
    """What happened to the runners; kept across calls so progress only ever moves forward."""

    total: int = 0
    forced: set[str] = field(default_factory=set)
    stuck: dict[str, str] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def terminated(self) -> int:
        return len(self.gone)


class _Remaining(dict[str, Obj]):
    """The runners still there, by name, with a heap of their escalation deadlines, so each watch
    event costs O(log n) instead of a scan of every pod (O(n^2) over a cancellation)."""

    def __init__(self, escalate_after: int):
        super().__init__()
        self.escalate_after = escalate_after
        self._heap: list[tuple[datetime, int, str]] = []
        self._version: dict[str, int] = {}
        self._seq = itertools.count()

    def __setitem__(self, name: str, pod: Obj) -> None:
        super().__setitem__(name, pod)
        version = self._version[name] = next(self._seq)
        clock = runner_clock(pod, self.escalate_after)
        if clock is not None:
            heapq.heappush(self._heap, (clock.escalate_at, version, name))

    def _live(self, version: int, name: str, skip: set[str]) -> bool:
        return name in self and self._version.get(name) == version and name not in skip

    def due(self, now: datetime, skip: set[str]) -> list[str]:
        """Runners whose escalation time has come (each returned once per pod version)."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _, version, name = heapq.heappop(self._heap)
            if self._live(version, name, skip):
                out.append(name)
        return out

    def next_delay(self, now: datetime, skip: set[str]) -> float | None:
        while self._heap:
            at, version, name = self._heap[0]
            if self._live(version, name, skip):
                return escalation_delay(RunnerClock(at, at), now)
            heapq.heappop(self._heap)
        return None


class RunnerTerminator:
    def __init__(self, kube: Kube, namespace: str, selector: str, *, grace: int, escalate_after: int,
                 stuck_timeout: float, concurrency: int, clock: Clock, log: Bound,
                 on_progress: Callable[[Termination], None], on_forced: Callable[[str], Awaitable[None]],
                 adopt_new: bool, owner: str, task_filter: frozenset[str] | None = None):
        self.kube, self.namespace, self.selector = kube, namespace, selector
        self.grace, self.escalate_after, self.stuck_timeout = grace, escalate_after, stuck_timeout
        self.concurrency, self.clock, self.log = concurrency, clock, log
        self.on_progress, self.on_forced, self.adopt_new = on_progress, on_forced, adopt_new
        self._forced_at: dict[str, float] = {}
        self.owner, self.task_filter = owner, task_filter
        self.foreign: set[str] = set()

    @property
    def pods_path(self) -> str:
        return core_path(self.namespace, "pods")

    def wanted(self, pod: Obj) -> bool:
        return self.task_filter is None or _task(pod) in self.task_filter

    async def list_runners(self) -> tuple[list[Obj], str]:
        items, rv = await self.kube.list_all(self.pods_path, label_selector=self.selector, meta_only=True)
        return [p for p in items if self.wanted(p)], rv

    def is_foreign(self, pod: Obj) -> bool:
        """Signalled by another cancellation (a TaskCancellation racing a JobCancellation): that one
        counts it; this one only waits until it is gone."""
        prior = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CANCEL_REQUESTED)
        if not prior:
            return False
        try:
            return bool(json.loads(prior).get("by") not in (None, self.owner))
        except ValueError:
            return False

    # ------------------------------------------------------------------ signal
    async def signal(self, pods: list[Obj], reason: str, by: str) -> int:
        """Annotate each runner with the cancellation request, for runners that stop cooperatively
        (they read it through the downward API). Returns how many were signalled."""
        value = json.dumps({"reason": reason, "requestedAt": iso(self.clock.now()), "by": by})
        done = 0

        async def one(pod: Obj) -> None:
            nonlocal done
            meta = pod["metadata"]
            prior = (meta.get("annotations") or {}).get(ANNOTATION_CANCEL_REQUESTED)
            if prior:  # signalled already, by us (a resumed step) or by another cancellation
                done += 0 if self.is_foreign(pod) else 1
                return
            try:
                await self.kube.merge_patch(core_path(self.namespace, "pods", meta["name"]),
                                            {"metadata": {"annotations": {ANNOTATION_CANCEL_REQUESTED: value}}},
                                            meta_only=True)
                done += 1
                self.log.info("runner signalled", runner=meta["name"], task=_task(pod))
            except NotFound:
                self.log.info("runner already gone", runner=meta["name"], task=_task(pod))
            except ApiError as exc:
                self.log.warning("runner signal failed", runner=meta["name"], task=_task(pod), error=str(exc))

        await bounded(pods, one, self.concurrency)
        return done

    # ------------------------------------------------------------------ terminate
    async def terminate(self, state: Termination, listed: tuple[list[Obj], str] | None = None) -> Termination:
        """Delete every runner matching the selector and wait until each is gone, forced, or stuck.
        `listed`: the runners as the signal step just listed them (the watch starts from that
        list's resourceVersion, so nothing that changed since is missed)."""
        pods, rv = listed if listed is not None else await self.list_runners()
        remaining = _Remaining(self.escalate_after)
        for p in pods:
            remaining[p["metadata"]["name"]] = p
        self.foreign = {n for n, p in remaining.items() if self.is_foreign(p)}
        counted = len(remaining) - len(self.foreign)
        if state.total == 0:
            state.total = counted
        else:  # resumed: pods that disappeared while we were away count as terminated
            state.total = max(state.total, counted + state.terminated + len(state.stuck))
        forced_at = self._forced_at = {}
        started = self.clock.monotonic()
        self.on_progress(state)

        events: asyncio.Queue[Obj] = asyncio.Queue()
        watch_rv = [rv]
        watcher = asyncio.create_task(self._watch(events, watch_rv))
        try:
            await bounded(list(remaining.values()), lambda p: self._delete(p, remaining, state), self.concurrency)
            self._settle(remaining, state, started)
            while remaining:
                now = self.clock.now()
                due = remaining.due(now, state.forced)
                if due:
                    await bounded(due, lambda n: self._force(n, remaining, state, forced_at), self.concurrency)
                    self._settle(remaining, state, started)
                    continue
                for name in [n for n, t in forced_at.items() if n in remaining]:
                    if self.clock.monotonic() - forced_at[name] >= self.stuck_timeout:
                        # ask the API server, not the watch: under load the watch can lag
                        # behind, and a pod it has not reported gone may be gone already
                        try:
                            pod = await self.kube.request("GET", core_path(self.namespace, "pods", name),
                                                          meta_only=True)
                        except NotFound:
                            self._gone(name, remaining, state, started)
                            continue
                        except ApiError:
                            pod = remaining[name]
                        if pod.get("metadata", {}).get("uid") != remaining[name].get("metadata", {}).get("uid"):
                            self._gone(name, remaining, state, started)  # a new pod took the name
                            continue
                        remaining.pop(name)
                        finalizers = (pod.get("metadata") or {}).get("finalizers") or []
                        state.stuck[name] = ("still present after force deletion"
                                             + (f" (finalizers: {', '.join(finalizers)})" if finalizers else ""))
                        metrics.TERMINATION_TIMEOUTS.inc()
                        self.log.error("runner stuck", runner=name, task=_task(pod), reason=state.stuck[name])
                        self.on_progress(state)
                if not remaining:
                    break
                wait = next_wakeup(
                    [remaining.next_delay(now, state.forced)]
                    + [max(0.0, self.stuck_timeout - (self.clock.monotonic() - t))
                       for n, t in forced_at.items() if n in remaining],
                    ceiling=5.0,
                )
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=max(wait, 0.01))
                except TimeoutError:
                    # no news: make sure pods we think are there really are (a missed event)
                    if wait >= 5.0:
                        await self._resync(remaining, state, started)
                    continue
                await self._apply(ev, remaining, state, started)
                while not events.empty():
                    await self._apply(events.get_nowait(), remaining, state, started)
                self._settle(remaining, state, started)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        return state

    async def _delete(self, pod: Obj, remaining: dict[str, Obj], state: Termination) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        clock = runner_clock(pod, 0)
        if clock is not None:
            left = (clock.grace_end - self.clock.now()).total_seconds()
            if left <= self.grace:  # already deleting with no more grace than ours
                return
        try:
            out = await self.kube.delete(core_path(self.namespace, "pods", name),
                                         grace_period_seconds=self.grace, uid=meta.get("uid"), meta_only=True)
        except TransientError as exc:
            state.errors[name] = str(exc)
            self.log.warning("runner delete failed, will retry", runner=name, task=_task(pod), error=str(exc))
            return
        except ApiError as exc:
            state.errors[name] = str(exc)
            self.log.error("runner delete refused", runner=name, task=_task(pod), error=str(exc))
            return
        state.errors.pop(name, None)
        if self.grace == 0 and name not in state.forced:  # force: true, no grace at all
            state.forced.add(name)
            self._forced_at[name] = self.clock.monotonic()
            await self.on_forced(name)
        self.log.info("runner deleted", runner=name, task=_task(pod), grace_period_seconds=self.grace,
                      answer="gone" if out is None else "terminating")
        if out is None:
            self._gone(name, remaining, state, None)
        elif (out.get("metadata") or {}).get("name") == name and name in remaining:
            remaining[name] = out  # the pod (its metadata) as it is now: terminating

    async def _force(self, name: str, remaining: dict[str, Obj], state: Termination,
                     forced_at: dict[str, float]) -> None:
        pod = remaining.get(name)
        if pod is None:
            return
        if runner_clock(pod, 0) is None:  # the graceful delete never went through: try it again
            await self._delete(pod, remaining, state)
            if name in remaining and runner_clock(remaining[name], 0) is None:
                forced_at.setdefault(name, self.clock.monotonic())
                return
        state.forced.add(name)
        forced_at[name] = self.clock.monotonic()
        await self.on_forced(name)
        try:
            await self.kube.delete(core_path(self.namespace, "pods", name), grace_period_seconds=0,
                                   uid=pod["metadata"].get("uid"), meta_only=True)
            self.log.warning("runner force-deleted", runner=name, task=_task(pod),
                             grace_period_seconds=self.grace, escalate_after_seconds=self.escalate_after)
        except ApiError as exc:
            self.log.error("runner force delete failed", runner=name, task=_task(pod), error=str(exc))
            state.errors[name] = str(exc)

    def _gone(self, name: str, remaining: dict[str, Obj], state: Termination, started: float | None) -> None:
        pod = remaining.pop(name, None)
        if name in state.gone or name in self.foreign:
            return
        state.gone.add(name)
        mode = "forced" if name in state.forced else "graceful"
        metrics.RUNNERS_TERMINATED.labels(mode=mode).inc()
        self.log.info("runner gone", runner=name, task=_task(pod) if pod else None, mode=mode,
                      duration=None if started is None else round(self.clock.monotonic() - started, 3))

    def _settle(self, remaining: dict[str, Obj], state: Termination, started: float) -> None:
        self.on_progress(state)

    async def _apply(self, ev: Obj, remaining: dict[str, Obj], state: Termination, started: float) -> None:
        kind, obj = ev.get("type"), ev.get("object") or {}
        if kind == "RESYNC":
            await self._resync(remaining, state, started)
            return
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        if kind == "DELETED":
            if name in remaining:
                self._gone(name, remaining, state, started)
        elif kind in ("ADDED", "MODIFIED"):
            if name in remaining:
                remaining[name] = obj
            elif self.adopt_new and self.wanted(obj) and name not in state.gone and name not in state.stuck:
                # a runner that appeared after the list (a racing dispatcher): it goes too
                remaining[name] = obj
                state.total += 1
                self.log.warning("late runner found", runner=name, task=_task(obj))
                await self._delete(obj, remaining, state)

    async def _resync(self, remaining: dict[str, Obj], state: Termination, started: float) -> None:
        pods, _ = await self.list_runners()
        present = {p["metadata"]["name"]: p for p in pods}
        for name in list(remaining):
            if name in present:
                remaining[name] = present[name]
            else:
                self._gone(name, remaining, state, started)
        for name, p in present.items():
            if name in remaining:
                if runner_clock(p, 0) is None and name not in state.forced:
                    await self._delete(p, remaining, state)

    async def _watch(self, out: asyncio.Queue[Obj], rv: list[str]) -> None:
        backoff = 0.2
        while True:
            try:
                async for ev in self.kube.watch(self.pods_path, label_selector=self.selector,
                                                resource_version=rv[0], meta_only=True):
                    meta = (ev.get("object") or {}).get("metadata") or {}
                    if meta.get("resourceVersion"):
                        rv[0] = meta["resourceVersion"]
                    if ev.get("type") != "BOOKMARK":
                        await out.put(ev)
                    backoff = 0.2
            except Gone:
                _, rv[0] = await self.list_runners()
                await out.put({"type": "RESYNC"})
            except (TransientError, ApiError) as exc:
                self.log.warning("runner watch broken, resuming", error=str(exc))
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                await out.put({"type": "RESYNC"})


def _task(pod: Obj | None) -> str | None:
    if not pod:
        return None
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_TASK)
