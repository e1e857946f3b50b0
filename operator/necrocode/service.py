"""CancellationService: runs a cancellation's steps in order, records each in the status,
emits an Event per step transition, and decides the final phase (seed 5).

Level-triggered: `run` may be called for a cancellation in any state (new, half done after an
operator restart, finished) and only does what is still missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from necrocode import metrics
from necrocode.budget import CURRENT, Budget
from necrocode.cleaner import ResourceCleaner
from necrocode.clock import Clock, SystemClock
from necrocode.events import DetailEvents, EventRecorder
from necrocode.kube import ApiError, Kube, NotLeader, TransientError, nc_path
from necrocode.logs import Bound
from necrocode.model import (
    ANNOTATION_ESCALATED_BY,
    PLURAL,
    TASK_CANCELLATION,
    TERMINAL_PHASES,
    CancellationSpec,
    CancellationStatus,
    Phase,
    StepState,
    force_requester_of,
    iso,
    parse_time,
    requester_of,
)
from necrocode.planning import final_phase, phase_conditions
from necrocode.policies.resume import (
    StepAction,
    cancellation_bound,
    keeps_logs,
    log_windows,
    out_of_time,
    spec_windows,
    step_action,
    time_left,
)
from necrocode.policies.status_writes import interval_for
from necrocode.runnerwatch import RunnerWatches
from necrocode.settings import Settings
from necrocode.steps import Ctx, StepDef, StepResult, restore_affected, steps_for
from necrocode.taskregistry import TaskRegistry
from necrocode.tracker import CancellationTracker

Obj = dict[str, Any]


class CancellationService:
    def __init__(self, kube: Kube, settings: Settings, clock: Clock | None = None):
        self.kube, self.settings = kube, settings
        self.clock: Clock = clock or SystemClock()
        self.runner_watches = RunnerWatches(kube, self.clock) if settings.shared_runner_watch else None
        self.detail_events = DetailEvents(settings.event_qps, settings.event_burst, self.clock)
        """The Event budget all cancellations share for their per-task and per-runner Events."""
        self.running: dict[str, Ctx] = {}
        """The cancellations at work in this process, by uid (a forced request escalates one here)."""

    def escalate(self, uid: str, by: str) -> bool:
        ctx = self.running.get(uid)
        if ctx is None:
            return False
        ctx.escalate(by)
        return True

    async def observe_spec(self, body: Obj) -> None:
        """The spec of a cancellation changed since its status was written (a newer
        metadata.generation): spec.force turned on, the only change the CRD allows. One at work
        here is forced at once (Ctx.force_set). One that had already ended when the change came
        has nothing left to force; its status records that it saw that generation, so a
        `kubectl wait --for=condition=...` on it is not left waiting for it."""
        meta = body.get("metadata") or {}
        generation = meta.get("generation")
        ctx = self.running.get(str(meta.get("uid") or ""))
        if ctx is not None and not ctx.status.terminal:
            if (body.get("spec") or {}).get("force") is True:
                ctx.force_set(force_requester_of(meta, policy_installed=self.settings.requester_policy), generation)
            return
        status = body.get("status") or {}
        if status.get("phase") not in {p.value for p in TERMINAL_PHASES}:
            return  # not started yet, or started by another run: that run reads the spec itself
        conditions = [{**c, "observedGeneration": generation} for c in status.get("conditions") or []
                      if isinstance(c, dict)]
        try:
            await self.kube.merge_patch(nc_path(str(meta.get("namespace")), PLURAL[str(body.get("kind"))],
                                                str(meta.get("name")), "status"),
                                        {"status": {"observedGeneration": generation, "conditions": conditions}})
        except ApiError as exc:
            Bound(cancellation=meta.get("name"), kind=body.get("kind"), namespace=meta.get("namespace")).warning(
                "status not updated to the spec's generation", error=str(exc))

    def context(self, body: Obj) -> tuple[Ctx, CancellationTracker]:
        kind = body["kind"]
        meta = body["metadata"]
        spec = CancellationSpec.model_validate(body.get("spec") or {})
        status = CancellationStatus.model_validate(body.get("status") or {})
        status.bound(self.settings.status_list_limit)
        log = Bound(cancellation=meta["name"], kind=kind, namespace=meta["namespace"], job=spec.job_name,
                    task=spec.task_id)
        tracker = CancellationTracker(self.kube, kind, meta["namespace"], meta["name"], status,
                                      interval=self.settings.status_write_interval, clock=self.clock, log=log,
                                      stretch=self._status_interval, resource_version=meta.get("resourceVersion"))
        s = self.settings
        ctx = Ctx(
            kube=self.kube, settings=s, clock=self.clock, kind=kind, namespace=meta["namespace"],
            name=meta["name"], uid=meta.get("uid", ""), spec=spec, status=status, log=log,
            events=EventRecorder(self.kube, self.clock, meta.get("uid", ""), log,
                                 concurrency=max(1, s.concurrency // 5), details=self.detail_events),
            registry=TaskRegistry(self.kube, meta["namespace"], clock=self.clock, log=log,
                                  concurrency=s.concurrency),
            cleaner=ResourceCleaner(self.kube, meta["namespace"], log=log, concurrency=s.concurrency,
                                    include_secrets=s.include_secrets),
            changed=tracker.changed, flush=tracker.flush, body=body, wrote_record=tracker.saw,
            escalate_other=self.escalate, runner_watches=self.runner_watches,
            requester=requester_of(meta, spec.requested_by, policy_installed=s.requester_policy),
        )
        escalated_by = (meta.get("annotations") or {}).get(ANNOTATION_ESCALATED_BY)
        if escalated_by and not spec.force:  # asked before a restart: still forced
            ctx.escalated_by = status.escalated_by = str(escalated_by)[:300]
            ctx.forced_now.set()
        return ctx, tracker

    async def run(self, body: Obj) -> CancellationStatus:
        ctx, tracker = self.context(body)
        status = ctx.status
        if status.terminal:
            return status
        metrics.IN_PROGRESS.labels(kind=ctx.kind).inc()
        ctx.in_progress = True
        self.running[ctx.uid] = ctx
        # this cancellation's own API budget, seen by every request made inside the run (tasks
        # created in it copy the context): see necrocode.budget
        budget = CURRENT.set(self.budget_for())
        try:
            return await self._run(ctx, tracker)
        finally:
            CURRENT.reset(budget)
            self.running.pop(ctx.uid, None)
            _leave(ctx)

    def _status_interval(self, base: float) -> float:
        """One cancellation's status write interval now: all that run share the write rate."""
        return interval_for(base, len(self.running), self.settings.status_write_rate)

    def budget_for(self) -> Budget | None:
        """A new cancellation budget per run, or None when the settings set none."""
        s = self.settings
        if not s.cancellation_concurrency and not s.cancellation_qps:
            return None
        return Budget("cancellation", qps=s.cancellation_qps, concurrency=s.cancellation_concurrency)

    async def _run(self, ctx: Ctx, tracker: CancellationTracker) -> CancellationStatus:
        status = ctx.status
        logs = keeps_logs(ctx.spec, self.settings.preserve_logs, [s.name for s in status.steps])
        steps = steps_for(ctx.kind, ctx.spec.mode, ctx.spec.cooperative_seconds, logs)
        resumed = status.phase == Phase.RUNNING
        if not status.steps:
            for d in steps:
                status.step(d.name)
        if status.started_at is None:
            status.started_at = iso(self.clock.now())
        status.requested_by = ctx.requester.username or None
        status.requester_verified = ctx.requester.verified if ctx.requester.username else None
        meta = ctx.body.get("metadata") or {}
        status.observed_generation = meta.get("generation")
        status.phase = Phase.RUNNING
        what = f"job {ctx.spec.job_name}" + (f" task {ctx.spec.task_id}" if ctx.spec.task_id else "")
        for condition in phase_conditions(Phase.RUNNING, f"cancelling {what}"):
            status.set_condition(*condition)
        forcer = force_requester_of(meta, policy_installed=self.settings.requester_policy)
        if ctx.spec.force and forcer is not None:  # spec.force was turned on after creation: an escalation
            ctx.force_set(forcer)
        ctx.log.info("cancellation resumed" if resumed else "cancellation started", reason=ctx.spec.reason,
                     force=ctx.spec.force, grace_period_seconds=ctx.spec.grace_period_seconds,
                     escalate_after_seconds=ctx.spec.escalate_after_seconds, dry_run=ctx.spec.dry_run,
                     cascade=ctx.spec.cascade if ctx.kind == TASK_CANCELLATION else None)
        if not resumed:
            await ctx.events.emit(ctx.body, "started", "Started",
                                  f"cancelling {what}" +
                                  (f" for {ctx.requester.text}" if ctx.requester.username else "") +
                                  (f": {ctx.spec.reason}" if ctx.spec.reason else ""))
        tracker.changed()  # written in the background (or by an earlier flush): the first step starts at once

        s = self.settings
        bound = cancellation_bound(ctx.grace, ctx.spec.escalate_after_seconds, s.stuck_timeout,
                                   s.retry.budget(s.request_timeout), len(steps), ctx.is_job,
                                   windows=spec_windows(ctx.spec) + log_windows(logs, s.log_read_timeout,
                                                                                s.retry.budget(s.request_timeout)))
        failed_critical = False
        try:
            async with asyncio.timeout(time_left(bound, status.started_at, self.clock.now())):
                if resumed:
                    with contextlib.suppress(ApiError):
                        await restore_affected(ctx)
                for d in steps:
                    step = status.step(d.name)
                    action, why = step_action(step.state, stop=ctx.stop, failed_critical=failed_critical)
                    if action is StepAction.KEEP:
                        continue
                    if action is StepAction.SKIP:
                        step.state, step.message = StepState.SKIPPED, why
                        continue
                    result = await self._step(ctx, tracker, d)
                    if result.state == StepState.FAILED and d.critical and not ctx.stop:
                        failed_critical = True
        except TimeoutError:
            failed_critical = out_of_time(status, [(d.name, d.critical) for d in steps], bound, self.clock.now())
            ctx.log.error("cancellation bound ran out", bound_seconds=round(bound))

        tracker.hold()  # the terminal phase goes out last, with the final flush
        if ctx.final is not None:
            status.phase, status.message = ctx.final
        if not status.terminal:
            status.phase = final_phase(len(status.errors) + sum(
                1 for s in status.steps if s.state == StepState.FAILED), failed_critical)
            if status.message is None:
                status.message = _summary(status)
        status.completed_at = iso(self.clock.now())
        for condition in phase_conditions(status.phase, status.message or ""):
            status.set_condition(*condition)
        # metrics and the final event first, the terminal status last: whoever sees the final
        # phase also sees its counters and its event
        elapsed = _elapsed(status)
        _leave(ctx)
        metrics.REQUESTS.labels(kind=ctx.kind, result=status.phase.value).inc()
        if elapsed is not None:
            metrics.DURATION.labels(kind=ctx.kind).observe(elapsed)
        await ctx.events.emit(ctx.body, "finished", status.phase.value, status.message or "",
                              "Normal" if status.phase == Phase.COMPLETED else "Warning")
        await ctx.settle()
        await ctx.events.drain()
        await tracker.flush()
        ctx.log.info("cancellation finished", phase=status.phase.value, duration=elapsed,
                     message=status.message, progress=status.progress.dump(), errors=len(status.errors))
        return status

    async def _step(self, ctx: Ctx, tracker: CancellationTracker, d: StepDef) -> StepResult:
        step = ctx.status.step(d.name)
        log = ctx.log.bind(step=d.name)
        first = step.state == StepState.PENDING
        step.state = StepState.RUNNING
        step.started_at = step.started_at or iso(self.clock.now())
        tracker.changed()  # step boundaries are written in the background, coalesced
        every_step = self.settings.step_events == "all"
        if first and every_step:
            await ctx.events.emit(ctx.body, f"step-{d.name}-running", f"{d.name}Started", f"step {d.name} started")
        log.info("step started" if first else "step resumed")
        started = self.clock.monotonic()
        ctx.log, ctx.step_name = log, d.name
        try:
            result = await self._attempts(ctx, tracker, d, log)
        finally:
            ctx.log = log.bind(step=None)
        duration = self.clock.monotonic() - started
        step.state = result.state
        step.message = result.message
        step.finished_at = iso(self.clock.now())
        metrics.STEP_DURATION.labels(kind=ctx.kind, step=d.name).observe(duration)
        if result.state == StepState.FAILED and not ctx.stop:  # a rejection is not a failure
            metrics.FAILURES.labels(kind=ctx.kind, step=d.name).inc()
        tracker.changed()
        if every_step or result.state == StepState.FAILED:  # every step is in status either way
            await ctx.events.emit(ctx.body, f"step-{d.name}-done", f"{d.name}{result.state.value}",
                                  f"step {d.name} {result.state.value.lower()}: {result.message}",
                                  "Warning" if result.state == StepState.FAILED else "Normal")
        log.info("step finished", state=result.state.value, duration=round(duration, 3), message=result.message)
        return result


    async def _attempts(self, ctx: Ctx, tracker: CancellationTracker, d: StepDef, log: Bound) -> StepResult:
        """Run the step; while it fails on a fault of the API (not on an answer), run it again
        with backoff: every step is idempotent, and the cancellation's bound (the timeout
        around all steps) is what ends a fault that does not end. The errors in status are
        those of the latest attempt."""
        step = ctx.status.step(d.name)
        attempt = 0
        while True:
            attempt += 1
            ctx.status.clear_errors(d.name)
            try:
                result = await d.run(ctx)
            except (asyncio.CancelledError, NotLeader):
                raise  # stopped, or no longer the leader: write nothing more
            except ApiError as exc:
                result = StepResult(StepState.FAILED, f"API error: {exc}", transient=isinstance(exc, TransientError))
                ctx.status.add_error(d.name, _object_of(exc), str(exc), exc.attempts)
            except Exception as exc:  # a bug must not leave the cancellation Running forever
                log.error("step crashed", error=repr(exc))
                result = StepResult(StepState.FAILED, f"internal error: {exc!r}")
                ctx.status.add_error(d.name, "-", repr(exc))
            if not result.transient or ctx.stop:
                return result
            pause = self.settings.retry.delay(attempt, random.random())
            log.warning("step failed on a fault of the API; running it again", attempt=attempt,
                        pause=round(pause, 2), message=result.message)
            step.message = f"attempt {attempt} failed on a fault of the API ({result.message}); again in {pause:.1f}s"
            tracker.changed()
            await self.clock.sleep(pause)


def _object_of(exc: ApiError) -> str:
    details = exc.body.get("details") if exc.body else None
    return str(details.get("name") or "-") if isinstance(details, dict) else "-"


def _leave(ctx: Ctx) -> None:
    if ctx.in_progress:
        ctx.in_progress = False
        metrics.IN_PROGRESS.labels(kind=ctx.kind).dec()


def _summary(status: CancellationStatus) -> str:
    p = status.progress
    s = (f"{p.runners_terminated}/{p.runners_total} runner(s) stopped ({p.runners_forced} forced), "
         f"{p.tasks_cancelled} task(s) cancelled, {p.leases_released} lease(s) released, "
         f"{p.resources_deleted} resource(s) deleted, {p.artifacts_preserved} artifact(s) kept")
    if status.errors:
        s += f"; {len(status.errors)} error(s)"
    return s


def _elapsed(status: CancellationStatus) -> float | None:
    a, b = parse_time(status.started_at), parse_time(status.completed_at)
    return None if a is None or b is None else (b - a).total_seconds()
