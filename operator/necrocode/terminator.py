"""RunnerTerminator: signal runner pods, delete them with their grace period, follow them with
one label-selector watch, and force-delete those still there when the grace (plus the
escalation delay) has run out (seed 3, 8.2, 11.2).

When to delete, force, call a runner stuck or wake up is decided in policies.termination, from
each pod's own deletionTimestamp, so a terminator started again after an operator restart picks
up exactly where the last one was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from necrocode import metrics
from necrocode.clock import Clock
from necrocode.concurrency import bounded
from necrocode.kube import ApiError, Conflict, Gone, Kube, NotFound, TransientError, core_path
from necrocode.logs import Bound
from necrocode.model import ANNOTATION_CANCEL_REQUESTED, LABEL_TASK, Ref, clip, iso
from necrocode.planning import foreign_marker, marker_is, marker_of
from necrocode.policies.termination import Schedule, Termination, count_away, delete_needed, finished_list_fresh
from necrocode.runnerwatch import RunnerWatches

Obj = dict[str, Any]


class RunnerTerminator:
    def __init__(self, kube: Kube, namespace: str, selector: str, *, grace: int, escalate_after: int,
                 stuck_timeout: float, concurrency: int, clock: Clock, log: Bound,
                 on_progress: Callable[[Termination], None], on_forced: Callable[[str], Awaitable[None]],
                 adopt_new: bool, owner: Ref, task_filter: frozenset[str] | None = None,
                 live_requests: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
                 belongs: Callable[[Obj], bool] = lambda pod: True,
                 finished_tasks: Callable[[], Awaitable[frozenset[str]]] | None = None,
                 before_force: Callable[[str], Awaitable[None]] | None = None,
                 watches: RunnerWatches | None = None):
        self.kube, self.namespace, self.selector = kube, namespace, selector
        self.grace, self.escalate_after, self.stuck_timeout = grace, escalate_after, stuck_timeout
        self.concurrency, self.clock, self.log = concurrency, clock, log
        self.on_progress, self.on_forced, self.adopt_new = on_progress, on_forced, adopt_new
        self.owner, self.task_filter, self.belongs = owner, task_filter, belongs
        self.before_force = before_force
        """Runs right before a runner is force-deleted (its log read once more; bounded by the caller)."""
        self.watches = watches
        """The namespace's shared runner watch (runnerwatch.py); None: a watch of its own."""
        self.foreign: set[str] = set()
        self.seen: set[str] = set()
        """Every runner this terminator has had in hand: a watch replaying an old event of one
        that went (after a reconnect) must not bring it back as a late runner."""
        self._live_requests = live_requests
        self._live: Mapping[str, str] | None = None
        self._attempts: dict[str, int] = {}
        self._escalated = False
        self._events: asyncio.Queue[Obj] | None = None
        self._finished_tasks = finished_tasks
        """The ids of the tasks that reached Done or Failed by themselves, asked once per round of
        forcing (one label-selector list of the job's tasks, not one per runner), and answering
        the rounds that follow within policies.termination.FINISHED_REUSE."""
        self._finished: frozenset[str] = frozenset()
        self._finished_at: float | None = None

    @property
    def pods_path(self) -> str:
        return core_path(self.namespace, "pods")

    def wanted(self, pod: Obj) -> bool:
        """A runner of the tasks this request stops, of the job instance it was made for."""
        return (self.task_filter is None or _task(pod) in self.task_filter) and self.belongs(pod)

    async def list_runners(self) -> tuple[list[Obj], str]:
        items, rv = await self.kube.list_all(self.pods_path, label_selector=self.selector, meta_only=True)
        return [p for p in items if self.wanted(p)], rv

    async def live(self) -> Mapping[str, str]:
        """The other cancellations in flight (uid -> kind/name), asked once and only when some
        runner carries a marker that is not ours."""
        if self._live is None:
            self._live = await self._live_requests() if self._live_requests is not None else {}
        return self._live

    async def find_foreign(self, pods: list[Obj]) -> set[str]:
        """Runners signalled by another request still in flight (a TaskCancellation racing a
        JobCancellation): that one counts them; this one only waits until they are gone. Any
        other marker (unreadable, or of a request finished or gone) is not a reason to skip."""
        marked = [(p, marker_of(p)) for p in pods]
        if not any(m is not None and not marker_is(m, self.owner) for _, m in marked):
            return set()
        live = await self.live()
        return {p["metadata"]["name"] for p, m in marked if foreign_marker(m, self.owner, live)}

    def escalate(self) -> None:
        """A forced request asked for it: every runner still there is force-deleted now."""
        self._escalated = True
        self.grace = 0
        if self._events is not None:
            self._events.put_nowait({"type": "ESCALATE"})

    # ------------------------------------------------------------------ signal
    async def signal(self, pods: list[Obj], reason: str) -> int:
        """Annotate each runner with the cancellation request, for runners that stop cooperatively
        (they read it through the downward API). A marker that is not ours and not of another
        request in flight (unreadable, stale) is overwritten. Returns how many carry ours."""
        value = json.dumps({"reason": reason, "requestedAt": iso(self.clock.now()), "by": self.owner.text,
                            "uid": self.owner.uid})
        foreign = await self.find_foreign(pods)
        done = 0

        async def one(pod: Obj) -> None:
            nonlocal done
            name = pod["metadata"]["name"]
            if name in foreign:
                return

            async def round_() -> bool:
                """Signal, guarded by the pod's resourceVersion: of two requests that list a runner
                at the same moment, one writes its marker and the other, refused with 409,
                reads the pod again and finds that marker (the runner is then the other's to count)."""
                meta = pod["metadata"]
                marker = marker_of(pod)
                if marker_is(marker, self.owner):  # signalled already (a resumed step)
                    return True
                if marker is not None and foreign_marker(marker, self.owner, await self.live()):
                    return False
                body = {"metadata": {"annotations": {ANNOTATION_CANCEL_REQUESTED: value}}}
                if meta.get("resourceVersion"):
                    body["metadata"]["resourceVersion"] = meta["resourceVersion"]
                try:
                    out = await self.kube.merge_patch(core_path(self.namespace, "pods", name), body, meta_only=True)
                except Conflict:
                    fresh = await self.kube.request("GET", core_path(self.namespace, "pods", name), meta_only=True)
                    pod["metadata"] = fresh.get("metadata") or meta  # the next step decides on what is there now
                    self._live = None  # a request that started meanwhile may have signalled it
                    raise
                pod["metadata"] = out.get("metadata") or meta
                self.log.info("runner signalled", runner=name, task=_task(pod))
                return True

            try:
                if await self.kube.conflict_retry(round_):
                    done += 1
            except NotFound:
                self.log.info("runner already gone", runner=name, task=_task(pod))
            except ApiError as exc:
                self.log.warning("runner signal failed", runner=name, task=_task(pod), error=str(exc),
                                 attempts=exc.attempts)

        await bounded(pods, one, self.concurrency)
        return done

    # ------------------------------------------------------------------ terminate
    async def terminate(self, state: Termination, listed: tuple[list[Obj], str] | None = None,
                        before_delete: Callable[[int], Awaitable[None]] | None = None) -> Termination:
        """Delete every runner matching the selector and wait until each is gone, forced, or stuck.
        `listed`: the runners as the signal step just listed them (the watch starts from that
        list's resourceVersion, so nothing that changed since is missed). `before_delete(total)`
        runs before the first delete (the step makes the total durable there: runners that go
        while no operator watches are counted from it after a restart)."""
        pods, rv = listed if listed is not None else await self.list_runners()
        remaining = Schedule(self.escalate_after, self.stuck_timeout)
        for p in pods:
            remaining[p["metadata"]["name"]] = p
        self.seen = set(remaining) | state.gone | set(state.stuck)
        self.foreign = await self.find_foreign(pods)
        count_away(state, len(remaining) - len(self.foreign), forced_only=self.grace == 0)
        if before_delete is not None:
            await before_delete(state.total)
        started = self.clock.monotonic()
        remaining.undeleted_deadline = started + self.grace + self.escalate_after
        self.on_progress(state)

        events: asyncio.Queue[Obj] = asyncio.Queue()
        self._events = events
        if self._escalated:
            events.put_nowait({"type": "ESCALATE"})
        watch_rv = [rv]
        watcher = asyncio.create_task(self._watch(events, watch_rv))
        try:
            await bounded(list(remaining.values()), lambda p: self._delete(p, remaining, state), self.concurrency)
            self._settle(remaining, state, started)
            while remaining:
                now = self.clock.now()
                due = remaining.due(now, self.clock.monotonic(), state.not_forceable, self._escalated)
                if due:
                    due = await self._spare_finished(due, remaining, state)
                    await bounded(due, lambda n: self._force(n, remaining, state), self.concurrency)
                    self._settle(remaining, state, started)
                    continue
                # asked about at once, within the budget: one by one, 5,000 stuck runners took 29 s
                await bounded(remaining.stuck(self.clock.monotonic()),
                              lambda n: self._check_stuck(n, remaining, state, started), self.concurrency)
                if not remaining:
                    break
                wake = remaining.wake(now, self.clock.monotonic(), state.not_forceable)
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=wake.seconds)
                except TimeoutError:
                    # no news: make sure pods we think are there really are (a missed event),
                    # and try again the deletes that did not go through
                    if wake.resync:
                        await self._resync(remaining, state, started)
                    continue
                await self._apply(ev, remaining, state, started)
                while not events.empty():
                    await self._apply(events.get_nowait(), remaining, state, started)
                self._settle(remaining, state, started)
            self.on_progress(state)  # the last runner may have gone in a resync or a stuck check
        finally:
            self._events = None
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        return state

    async def _check_stuck(self, name: str, remaining: Schedule, state: Termination, started: float) -> None:
        """A runner still listed stuck_timeout after its force delete: ask the API server, not
        the watch (under load the watch can lag behind, and a pod it has not reported gone may be
        gone already); still there means stuck, named in the status with the API's last answer."""
        try:
            pod = await self.kube.request("GET", core_path(self.namespace, "pods", name), meta_only=True)
        except NotFound:
            self._gone(name, remaining, state, started)
            return
        except ApiError as exc:
            pod = remaining[name]
            if isinstance(exc, TransientError):  # we cannot tell: it may be gone
                state.transient.add(name)
        if (pod.get("metadata") or {}).get("uid") != (remaining[name].get("metadata") or {}).get("uid"):
            self._gone(name, remaining, state, started)  # a new pod took the name
            return
        remaining.pop(name)
        state.stuck[name] = stuck_reason(pod, state.errors.get(name), state.attempts.get(name, 0),
                                         let_go=name in state.let_go)
        metrics.TERMINATION_TIMEOUTS.inc()
        self.log.error("runner stuck", runner=name, task=_task(pod), reason=state.stuck[name],
                       attempts=state.attempts.get(name, 0))
        self.on_progress(state)

    async def _delete(self, pod: Obj, remaining: Schedule, state: Termination) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        grace = self.grace  # as sent: an escalation may set self.grace to 0 while this DELETE is on the wire
        if not delete_needed(pod, grace, self.clock.now()):
            return
        try:
            out = await self.kube.delete(core_path(self.namespace, "pods", name),
                                         grace_period_seconds=grace, uid=meta.get("uid"), meta_only=True)
        except ApiError as exc:
            self._failed(name, pod, exc, state, "runner delete failed; tried again until the runner's deadline")
            return
        state.errors.pop(name, None)
        if grace == 0 and name not in state.forced:  # force: true, no grace at all
            state.forced.add(name)
            remaining.mark_forced(name, self.clock.monotonic())
            await self.on_forced(name)
        self.log.info("runner deleted", runner=name, task=_task(pod), grace_period_seconds=grace,
                      answer="gone" if out is None else "terminating")
        if out is None:
            self._gone(name, remaining, state, None)
        elif (out.get("metadata") or {}).get("name") == name and name in remaining:
            remaining[name] = out  # the pod (its metadata) as it is now: terminating

    async def _spare_finished(self, due: list[str], remaining: Schedule, state: Termination) -> list[str]:
        """Of the runners due to be forced, those whose task finished by itself (Done or Failed)
        are let go instead: deleted with their grace already (or tried again, if that delete has
        not gone through), never forced; the stuck timeout still bounds them. Returns the rest.
        The tasks are listed once for the whole round (and that list answers the rounds within
        FINISHED_REUSE after it); if that list fails, everyone due is forced as without the rule
        (the cancellation's bound comes first)."""
        if self._finished_tasks is None:
            return due
        asked = self.clock.monotonic()
        if finished_list_fresh(self._finished_at, asked):
            finished = self._finished
        else:
            try:
                finished = self._finished = await self._finished_tasks()
            except ApiError as exc:
                self.log.warning("listing the tasks before forcing failed; forcing as due", error=str(exc))
                return due
            self._finished_at = asked  # as of when it was asked for, not answered
        spare = [n for n in due if _task(remaining.get(n)) in finished]
        for name in spare:
            state.let_go.add(name)
            remaining.mark_forced(name, self.clock.monotonic())  # from now on, the stuck timeout applies
            self.log.info("runner's task finished: let go with its grace, not forced", runner=name,
                          task=_task(remaining.get(name)))
        return [n for n in due if n not in state.let_go]

    async def _force(self, name: str, remaining: Schedule, state: Termination) -> None:
        """Delete with grace 0. Only called once the runner's grace and the escalation delay have
        run out (from its deletionTimestamp, or since our first delete for one never deleted), or
        when a forced request escalated this one: a runner never loses grace it is owed."""
        pod = remaining.get(name)
        if pod is None:
            return
        if self.before_force is not None:
            await self.before_force(name)
        remaining.mark_forced(name, self.clock.monotonic())
        try:
            out = await self.kube.delete(core_path(self.namespace, "pods", name), grace_period_seconds=0,
                                         uid=pod["metadata"].get("uid"), meta_only=True)
        except ApiError as exc:
            state.forced.add(name)  # not forced again: the stuck timeout bounds it from here
            self._failed(name, pod, exc, state, "runner force delete failed")
            return
        if out is None:
            # gone before the force delete reached it (its graceful end, seen late by a busy
            # watch): it went gracefully, and is counted and reported so, without an Event
            self.log.info("runner gone before its force delete", runner=name, task=_task(pod))
            self._gone(name, remaining, state, None)
            return
        state.forced.add(name)
        await self.on_forced(name)
        self.log.warning("runner force-deleted", runner=name, task=_task(pod), grace_period_seconds=self.grace,
                         escalate_after_seconds=self.escalate_after, escalated=self._escalated)

    def _failed(self, name: str, pod: Obj, exc: ApiError, state: Termination, what: str) -> None:
        state.errors[name] = str(exc)
        if isinstance(exc, TransientError):
            state.transient.add(name)
        else:
            state.transient.discard(name)
        state.attempts[name] = state.attempts.get(name, 0) + exc.attempts
        self.log.warning(what, runner=name, task=_task(pod), error=str(exc), attempts=state.attempts[name])

    def _gone(self, name: str, remaining: Schedule, state: Termination, started: float | None) -> None:
        pod = remaining.pop(name, None)
        state.stuck.pop(name, None)  # reported stuck by an earlier attempt, gone now
        if name in state.gone or name in self.foreign:
            return
        state.gone.add(name)
        mode = "forced" if name in state.forced else "graceful"
        metrics.RUNNERS_TERMINATED.labels(mode=mode).inc()
        self.log.info("runner gone", runner=name, task=_task(pod) if pod else None, mode=mode,
                      duration=None if started is None else round(self.clock.monotonic() - started, 3))

    def _settle(self, remaining: Schedule, state: Termination, started: float) -> None:
        self.on_progress(state)

    async def _apply(self, ev: Obj, remaining: Schedule, state: Termination, started: float) -> None:
        kind, obj = ev.get("type"), ev.get("object") or {}
        if kind == "ESCALATE":
            return  # the loop forces what is left at its next turn
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
            elif (self.adopt_new and self.wanted(obj) and name not in self.seen
                  and not foreign_marker(marker_of(obj), self.owner, await self.live())):
                # a runner that appeared after the list (a racing dispatcher): it goes too
                remaining[name] = obj
                self.seen.add(name)
                state.total += 1
                self.log.warning("late runner found", runner=name, task=_task(obj))
                await self._delete(obj, remaining, state)

    async def _resync(self, remaining: Schedule, state: Termination, started: float) -> None:
        pods, _ = await self.list_runners()
        present = {p["metadata"]["name"]: p for p in pods}
        for name in list(remaining):
            if name in present:
                remaining[name] = present[name]
            else:
                self._gone(name, remaining, state, started)
        for name, p in present.items():
            if name in remaining and remaining.awaits_delete(name, state.forced):
                await self._delete(p, remaining, state)

    async def _watch(self, out: asyncio.Queue[Obj], rv: list[str]) -> None:
        if self.watches is not None:
            async with self.watches.subscribe(self.namespace, self.selector, rv[0]) as shared:
                if shared is not None:  # its events, and RESYNC when it had to start over
                    async for ev in shared:
                        await out.put(ev)
        breaks = 0  # in a row
        while True:
            try:
                async for ev in self.kube.watch(self.pods_path, label_selector=self.selector,
                                                resource_version=rv[0], meta_only=True):
                    meta = (ev.get("object") or {}).get("metadata") or {}
                    if meta.get("resourceVersion"):
                        rv[0] = meta["resourceVersion"]
                    if ev.get("type") != "BOOKMARK":
                        await out.put(ev)
                    breaks = 0
            except Gone:
                _, rv[0] = await self.list_runners()
                await out.put({"type": "RESYNC"})
            except (TransientError, ApiError) as exc:
                self.log.warning("runner watch broken, resuming", error=str(exc))
                breaks += 1
                await self.clock.sleep(self.kube.reconnect_pause(breaks, exc))
                await out.put({"type": "RESYNC"})


def stuck_reason(pod: Obj, error: str | None, attempts: int, let_go: bool = False) -> str:
    """Why a runner is still there, short whatever the pod holds (a long finalizer list must not
    make the status too large to write)."""
    if error:
        return clip(f"not deleted: {error} ({attempts} attempt(s))", 512)
    finalizers = [str(f) for f in ((pod.get("metadata") or {}).get("finalizers") or [])]
    why = ("its task finished: let go with its grace, never forced; still present after the stuck timeout"
           if let_go else "still present after force deletion")
    if finalizers:
        shown = ", ".join(f[:100] for f in finalizers[:3])
        more = f" and {len(finalizers) - 3} more" if len(finalizers) > 3 else ""
        why += f" (finalizers: {shown}{more})"
    return clip(why, 512)


def _task(pod: Obj | None) -> str | None:
    if not pod:
        return None
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_TASK)
