"""The steps of a cancellation, for both kinds (seed 5.2, 5.3). Each step is idempotent: it
looks at the world and the cancellation's status and does only what is still missing, so the
engine can run it again after a restart at any point.

A step returns a StepResult; the engine (service.py) records it, emits the event, and moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from necrocode import access, keeping
from necrocode.cleaner import CleanupOutcome, ResourceCleaner
from necrocode.clock import Clock
from necrocode.concurrency import bounded, together
from necrocode.cooperation import CooperativeWindow
from necrocode.drainer import TaskDrainer
from necrocode.events import EventRecorder
from necrocode.kube import ApiError, Kube, NotFound, core_path, nc_path
from necrocode.logkeeper import RunnerLogs
from necrocode.logs import Bound
from necrocode.logtail import is_kept_log
from necrocode.model import (
    ANNOTATION_CANCEL_REQUESTED,
    ANNOTATION_CANCELLED_BY,
    ANNOTATION_CANCELLED_BY_UID,
    ANNOTATION_ESCALATED_BY,
    FINISHED_TASK_STATES,
    JOB_CANCELLATION,
    LABEL_JOB,
    LABEL_ROLE,
    LABEL_SIGNAL,
    LABEL_TASK,
    PLURAL,
    ROLE_RUNNER,
    SIGNAL_ANNOTATION,
    TASK_CANCELLATION,
    TERMINAL_PHASES,
    AffectedTask,
    CancellationSpec,
    CancellationStatus,
    CleanupReport,
    CooperativeStatus,
    DrainStatus,
    JobPhase,
    Phase,
    Plan,
    Ref,
    Requester,
    RunnerOutcome,
    StepState,
    TaskState,
    clip,
    iso,
    parse_time,
)
from necrocode.planning import (
    LIVE_TASK_STATES,
    Claim,
    JobInstance,
    VerifyFindings,
    annotates,
    belongs_to,
    changed_by,
    claim_decision,
    classify_tasks,
    earlier_task_cancellations,
    job_affected_tasks,
    runner_summary,
    task_affected_tasks,
    task_id,
    task_state,
)
from necrocode.policies.cooperative import CooperativeTally, outcome_of, window_deadline
from necrocode.policies.drain import DrainTally, drain_split
from necrocode.policies.resume import deferral_limit, prior_termination
from necrocode.policies.termination import Termination, repair_grace
from necrocode.policies.window import WINDOW_END_WORDS
from necrocode.runnerwatch import RunnerWatches
from necrocode.settings import Settings
from necrocode.taskregistry import TaskRegistry
from necrocode.terminator import RunnerTerminator

Obj = dict[str, Any]
ENDED_BY_THEMSELVES = frozenset({TaskState.DONE, TaskState.FAILED})
"""Task states a task reaches on its own (Cancelled is what a cancellation does to it)."""


@dataclass
class StepResult:
    state: StepState = StepState.SUCCEEDED
    message: str = ""
    transient: bool = False
    """Failed on a fault of the API (429, 5xx, timeouts, resets past the call's retries), not on
    an answer: the engine runs the step again, with backoff, until the cancellation's bound."""


@dataclass
class Ctx:
    """Everything one cancellation's steps share."""

    kube: Kube
    settings: Settings
    clock: Clock
    kind: str
    namespace: str
    name: str
    uid: str
    spec: CancellationSpec
    status: CancellationStatus
    log: Bound
    events: EventRecorder
    registry: TaskRegistry
    cleaner: ResourceCleaner
    changed: Callable[[], None]
    flush: Callable[[], Awaitable[None]]
    body: Obj = field(default_factory=dict)
    wrote_record: Callable[[Obj], None] = lambda answer: None
    """Told the answer of each write of the record itself (not its status) made here: the
    tracker's status writes are conditional on the record's resourceVersion (tracker.py)."""
    stop: bool = False
    final: tuple[Phase, str] | None = None
    step_name: str = ""
    in_progress: bool = False
    job: Obj | None = None
    listed_once: dict[str, Any] = field(default_factory=dict)
    """Lists a step made that the next step may use once instead of listing again (the path to
    the first deletion is a chain of requests: each one saved is reaction time)."""
    background: set[asyncio.Task[None]] = field(default_factory=set)
    affected_all: list[AffectedTask] | None = None
    """Every task this request affects (the status keeps only the first status_list_limit)."""
    requester: Requester = field(default_factory=lambda: Requester(""))
    """Who asked (model.requester_of): verified when the API server recorded it."""
    escalated_by: str | None = None
    """Who escalated this one to force: a later forced request (kind/name), or the user who set
    spec.force to true (force_set)."""
    force_recorded: bool = False
    """force_set has recorded the change of spec.force in this run."""
    escalate_other: Callable[[str, str], bool] = lambda uid, by: False
    """Escalate the running cancellation with this uid, if it runs in this process (the service
    wires it); the annotation on that object covers a restart."""
    runner_watches: RunnerWatches | None = None
    """The process's shared runner watches (None: each terminator watches for itself)."""
    durable_total: int | None = None
    """The runners' total this run has written to the stored status (make_total_durable)."""
    terminator: RunnerTerminator | None = None
    """The terminator at work, while TerminateRunners runs (an escalation reaches it here)."""
    forced_announced: int = 0
    """Forced runners this run gave a RunnerForced Event of their own."""
    forced_unannounced: int = 0
    """Forced runners this run left without one (the per-cancellation limit or the Event
    budget): the RunnersForced summary counts them. Counted where the Event is refused, so a
    force delete that failed (a stuck runner, not a forced one) is never among them."""
    task_events: dict[str, bool] = field(default_factory=dict)
    """The tasks this run asked an Event for, by name: True written, False left out. A retried
    UpdateTaskStates asks for no task twice (its Event exists, or its refusal is counted)."""
    forced_now: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while the cancellation is forced (spec.force, an escalation now or before a restart):
    a wait (the drain, the cooperative window, the reading of the runners' logs) ends at once."""
    cooperative: frozenset[str] | None = None
    """The runners that ended by themselves inside the cooperative window (this run's)."""
    runner_logs: RunnerLogs | None = None
    """The runners' kept logs (preserveLogs), made by KeepLogs or, in a resumed run, from status."""
    contested: bool = False
    """An earlier TaskCancellation of the job was still in flight when this JobCancellation went
    on without it: the runners get the marker annotation (planning.annotates)."""
    _live: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.spec.force:
            self.forced_now.set()

    @property
    def ref(self) -> str:
        return f"{self.kind.lower()}/{self.name}"

    @property
    def me(self) -> Ref:
        return Ref(self.kind, self.name, self.uid)

    @property
    def forced(self) -> bool:
        return self.spec.force or self.escalated_by is not None

    @property
    def grace(self) -> int:
        return 0 if self.forced else self.spec.grace_period_seconds

    def escalate(self, by: str) -> None:
        """A forced request found this one running gracefully: force what is left, now."""
        if self.escalated_by is not None or self.spec.force:
            return
        self.status.escalated_by = by
        self.status.set_condition("Escalated", True, "ForceRequested", f"escalated to force by {by}")
        self._force_now(by)

    def force_set(self, user: Requester | None, generation: int | None = None) -> None:
        """spec.force was changed to true (by `user`, as the API server recorded it; `generation`:
        the spec's): force what is left, now, and record who asked (status.escalatedByUser, the
        Escalated condition, an Event). Also for a run that starts with that spec (after a
        restart, or a change before it began): recorded once however often it is called."""
        if generation is not None and generation != self.status.observed_generation:
            self.status.observed_generation = generation  # every condition now reflects that spec
            for c in self.status.conditions:
                c.observed_generation = generation
            self.changed()
        if self.force_recorded:
            return
        self.force_recorded = True
        who = user.text if user is not None else None
        words = f"escalated to force{f' by {who}' if who else ''}: spec.force set to true"
        self.status.escalated_by_user = who
        self.status.set_condition("Escalated", True, "ForceSet", words)
        self.spawn(self.events.emit(self.body, "force-set", "Escalated", words, "Warning"))
        if self.escalated_by is None:
            self._force_now(who or "spec.force", log=not self.spec.force)
        self.changed()

    def _force_now(self, by: str, log: bool = True) -> None:
        self.escalated_by = by
        self.forced_now.set()
        if log:
            self.log.warning("cancellation escalated to force", by=by)
        if self.terminator is not None:
            self.terminator.escalate()
        self.changed()

    async def make_total_durable(self, total: int) -> None:
        """Write the runners' total to the stored status before the first runner is deleted:
        runners that go while no operator watches (it died, or another replica takes over) are
        then counted from it after a restart, instead of being lost from the counts."""
        if self.durable_total != total:
            self.status.progress.runners_total = total
            await self.flush()
            self.durable_total = total

    async def live_requests(self) -> dict[str, str]:
        """The other cancellations of this namespace still in flight: uid -> kind/name."""
        if self._live is None:
            terminal = {p.value for p in TERMINAL_PHASES}
            live: dict[str, str] = {}
            for kind, plural in PLURAL.items():
                items, _ = await self.kube.list_all(nc_path(self.namespace, plural), meta_only=False)
                for o in items:
                    meta = o.get("metadata") or {}
                    if (o.get("status") or {}).get("phase") not in terminal and meta.get("uid") != self.uid:
                        live[str(meta.get("uid"))] = f"{kind.lower()}/{meta.get('name')}"
            self._live = live
        return self._live

    @property
    def instance(self) -> JobInstance | None:
        """The AgentJob instance this request acts on, as Validate recorded it in status."""
        return JobInstance(self.status.job_uid, self.status.job_created_at) if self.status.job_uid else None

    def mine(self, obj: Obj) -> bool:
        """One of this job instance's objects (not a same-named older job's)."""
        return belongs_to(obj, self.instance)

    @property
    def is_job(self) -> bool:
        return self.kind == JOB_CANCELLATION

    @property
    def keeps_logs(self) -> bool:
        """Its step table has KeepLogs (policies.resume.keeps_logs decided it when it started)."""
        return any(s.name == "KeepLogs" for s in self.status.steps)

    @property
    def job_selector(self) -> str:
        return f"{LABEL_JOB}={self.spec.job_name}"

    @property
    def runner_selector(self) -> str:
        return f"{self.job_selector},{LABEL_ROLE}={ROLE_RUNNER}"

    def cancelled_task_ids(self) -> frozenset[str] | None:
        """For a TaskCancellation: the tasks whose runners and resources go; None: the whole job."""
        if self.is_job:
            return None
        return frozenset(a.task_id for a in self.affected() if a.after == TaskState.CANCELLED.value)

    @property
    def listed(self) -> int:
        """Entries kept in a status list (settings.status_list_limit); counts stay exact."""
        return self.settings.status_list_limit

    def affected(self) -> list[AffectedTask]:
        return self.affected_all if self.affected_all is not None else list(self.status.affected_tasks)

    def spawn(self, work: Awaitable[object]) -> None:
        """Off the critical path; the engine waits for it before the final status."""
        async def run() -> None:
            try:
                await work
            except ApiError as exc:
                self.log.warning("background request failed", error=str(exc))

        task = asyncio.create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def settle(self) -> None:
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)

    def reuse(self, key: str) -> Any:
        return self.listed_once.pop(key, None)

    def end(self, phase: Phase, message: str) -> None:
        """Finish early (rejected, duplicate, dry run); the engine writes the phase last, after
        the remaining steps are marked Skipped, so a reader never sees a half-written end."""
        self.final = (phase, message)
        self.status.message = message
        self.stop = True


# ============================================================================ Validate
async def validate(ctx: Ctx) -> StepResult:
    """The job (and task) exist and are not finished; a request for a job that another request
    in flight (or Completed) covers records duplicateOf and acts on nothing, and, when it is
    forced, escalates that one. A request that ended Failed or PartiallyCompleted, or was
    deleted, never locks the job (planning.claim_decision)."""
    spec = ctx.spec

    async def round_() -> StepResult:
        try:
            job = await ctx.kube.get(ctx.registry.job_path(spec.job_name))
        except NotFound:
            return _reject(ctx, "JobNotFound", f"AgentJob {spec.job_name!r} not found in namespace {ctx.namespace}")
        uid = str(job["metadata"].get("uid") or "")
        if ctx.status.job_uid and uid != ctx.status.job_uid:
            return _reject(ctx, "JobRecreated", f"AgentJob {spec.job_name!r} was deleted and created again since "
                                                "this request began; it acts on the job it was made for only")
        ctx.job = job
        ctx.status.job_uid, ctx.status.job_created_at = uid or None, job["metadata"].get("creationTimestamp")
        annotations = job["metadata"].get("annotations") or {}
        claim_name, claim_uid = annotations.get(ANNOTATION_CANCELLED_BY), annotations.get(ANNOTATION_CANCELLED_BY_UID)
        phase = str((job.get("status") or {}).get("phase") or JobPhase.PENDING.value)
        claimer = None
        if claim_name and not (ctx.is_job and claim_name == ctx.name and claim_uid in (None, ctx.uid)):
            claimer = await _get(ctx, JOB_CANCELLATION, claim_name)
        decision = claim_decision(ctx.me, claim_name, claim_uid, claimer, phase)
        if decision == Claim.DUPLICATE:
            assert claimer is not None
            return await _duplicate(ctx, claimer)
        if decision == Claim.FINISHED:
            return _reject(ctx, "JobFinished", f"AgentJob {spec.job_name!r} is already {phase}; nothing to cancel")
        if not ctx.is_job:
            res = await _validate_task(ctx)
            if res is not None:
                return res
        if ctx.is_job and not spec.dry_run and decision != Claim.MINE:
            # 409: the job changed; decide again. Claimed and blocked in one write (BlockDispatch
            # then writes the phase only)
            ctx.job = await ctx.registry.claim_job(job, ctx.me, block=True)
            if decision == Claim.TAKE:
                ctx.log.info("job taken over from an earlier request that did not finish it",
                             earlier=f"jobcancellation/{claim_name}")
        ctx.spawn(_label_self(ctx))
        return StepResult(message=f"AgentJob {spec.job_name} is {phase}" +
                          (f", task {spec.task_id} can be cancelled" if not ctx.is_job else "") +
                          (f"; acting on what jobcancellation/{claim_name} left" if decision == Claim.TAKE else ""))

    return await ctx.kube.conflict_retry(round_)


def _reject(ctx: Ctx, reason: str, message: str) -> StepResult:
    ctx.end(Phase.REJECTED, message)
    ctx.status.set_condition("Rejected", True, reason, message)
    return StepResult(StepState.FAILED, message)


async def _duplicate(ctx: Ctx, claimer: Obj) -> StepResult:
    """Covered by the request that claimed the job; a forced request escalates it if it is
    still running gracefully (annotation for a restart, and at once if it runs here)."""
    meta, cspec = claimer["metadata"], claimer.get("spec") or {}
    other = f"jobcancellation/{meta['name']}"
    ctx.status.duplicate_of = other
    what = "job" if ctx.is_job else f"task {ctx.spec.task_id} with the rest of the job"
    message = (f"job {ctx.spec.job_name} is already cancelled by {other}; this request acts on nothing "
               f"({what} is covered by it)")
    running = (claimer.get("status") or {}).get("phase") not in {p.value for p in TERMINAL_PHASES}
    escalated_before = (meta.get("annotations") or {}).get(ANNOTATION_ESCALATED_BY)
    if escalated_before == ctx.ref:  # by this request, before a restart: record it again
        ctx.status.escalated = other
        ctx.status.set_condition("Escalated", True, "EscalatedOther", f"escalated {other} to force")
    elif ctx.spec.force and running and not cspec.get("force") and not escalated_before:
        await ctx.kube.merge_patch(nc_path(ctx.namespace, PLURAL[JOB_CANCELLATION], meta["name"]),
                                   {"metadata": {"annotations": {ANNOTATION_ESCALATED_BY: ctx.ref}}})
        ctx.escalate_other(str(meta.get("uid")), ctx.ref)
        ctx.status.escalated = other
        ctx.status.set_condition("Escalated", True, "EscalatedOther", f"escalated {other} to force")
        await ctx.events.emit(claimer, f"escalated-by-{ctx.uid}", "Escalated",
                              f"escalated to force by {ctx.ref}", "Warning")
        message += f"; escalated {other} to force: its runners are force-deleted now"
    ctx.end(Phase.COMPLETED, message)
    ctx.status.set_condition("Duplicate", True, "AlreadyCancelling", message)
    return StepResult(StepState.SUCCEEDED, message)


async def _validate_task(ctx: Ctx) -> StepResult | None:
    every = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
    ctx.listed_once["tasks"] = every
    tasks = [t for t in every if task_id(t) == ctx.spec.task_id]
    if not tasks:
        return _reject(ctx, "TaskNotFound", f"task {ctx.spec.task_id!r} not found in job {ctx.spec.job_name!r}")
    state = task_state(tasks[0])
    if state in FINISHED_TASK_STATES and not changed_by(tasks[0], ctx.me):
        return _reject(ctx, "TaskFinished", f"task {ctx.spec.task_id!r} is already {state.value}; nothing to cancel")
    return None


async def _get(ctx: Ctx, kind: str, name: str) -> Obj | None:
    try:
        return await ctx.kube.get(nc_path(ctx.namespace, PLURAL[kind], name))
    except NotFound:
        return None


async def _label_self(ctx: Ctx) -> None:
    """Label the cancellation with its job (and task) so CLI and API can list by job."""
    labels = {LABEL_JOB: ctx.spec.job_name}
    if ctx.spec.task_id:
        labels[LABEL_TASK] = ctx.spec.task_id
    current = (ctx.body.get("metadata") or {}).get("labels") or {}
    if all(current.get(k) == v for k, v in labels.items()):
        return
    try:
        ctx.wrote_record(await ctx.kube.merge_patch(nc_path(ctx.namespace, PLURAL[ctx.kind], ctx.name),
                                                    {"metadata": {"labels": labels}}, meta_only=True))
    except NotFound:
        pass


# ============================================================================ BlockDispatch
async def block_dispatch(ctx: Ctx) -> StepResult:
    if ctx.spec.dry_run:
        return StepResult(StepState.SKIPPED, "dry run: dispatch left open")
    job = ctx.job = await ctx.registry.block_dispatch(ctx.spec.job_name, known=ctx.job)
    await ctx.events.emit(job, "job-cancelling", "Cancelling",
                          f"{ctx.ref}{_for(ctx)} blocked dispatch: {ctx.spec.reason or 'no reason given'}")
    return StepResult(message="dispatch blocked; AgentJob phase Cancelling; new runner pods are refused at admission")


# ============================================================================ ClassifyTasks / ComputeCascade
async def classify_tasks_step(ctx: Ctx) -> StepResult:
    tasks = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
    cls = classify_tasks(tasks)
    affected = job_affected_tasks(tasks, _reason(ctx))
    _set_affected(ctx, affected)
    ctx.status.progress.tasks_unaffected = len(cls.finished)
    ctx.status.progress.finished_before_cancel = sum(1 for t in tasks if task_state(t) in ENDED_BY_THEMSELVES)
    msg = f"{len(cls.running)} running, {len(cls.pending)} pending, {len(cls.finished)} finished (left as they are)"
    if ctx.spec.dry_run:
        await _dry_run(ctx, affected)
    return StepResult(message=msg)


async def compute_cascade_step(ctx: Ctx) -> StepResult:
    tasks = ctx.reuse("tasks") or await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
    assert ctx.spec.task_id is not None
    affected, cascade = task_affected_tasks(tasks, ctx.spec.task_id, ctx.spec.cascade, _reason(ctx), ctx.me)
    _set_affected(ctx, affected)
    ctx.status.cascade_warnings = cascade.warnings
    for w in cascade.warnings:
        ctx.log.warning("dependency graph problem", detail=w)
    dependents = len(affected) - 1
    how = "cancelled" if ctx.spec.cascade else "blocked"
    msg = f"task {ctx.spec.task_id} and {dependents} unfinished dependent(s) ({how})"
    if cascade.warnings:
        msg += "; " + "; ".join(cascade.warnings[:5])
    if ctx.spec.dry_run:
        await _dry_run(ctx, affected)
    return StepResult(message=msg)


async def restore_affected(ctx: Ctx) -> None:
    """A resumed TaskCancellation whose status could not keep every affected task recomputes the
    list from the tasks (its own earlier changes included), so nothing is left out or counted twice."""
    total = ctx.status.affected_tasks_total or 0
    if ctx.is_job or ctx.affected_all is not None or total <= len(ctx.status.affected_tasks):
        return
    assert ctx.spec.task_id is not None
    tasks = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
    if any(task_id(t) == ctx.spec.task_id for t in tasks):
        ctx.affected_all, _ = task_affected_tasks(tasks, ctx.spec.task_id, ctx.spec.cascade, _reason(ctx), ctx.me)


def _set_affected(ctx: Ctx, affected: list[AffectedTask]) -> None:
    ctx.affected_all = None if ctx.is_job else affected
    ctx.status.affected_tasks = affected[:ctx.listed]
    ctx.status.affected_tasks_total = len(affected)
    if len(affected) > ctx.listed and ctx.is_job:
        ctx.log.info("affected task list truncated in status", total=len(affected), listed=ctx.listed)


def _for(ctx: Ctx) -> str:
    """' for <requester>' in an Event's words ('(unverified)' when only the client says so)."""
    return f" for {ctx.requester.text}" if ctx.requester.username else ""


def _reason(ctx: Ctx) -> str:
    return ctx.spec.reason or f"cancelled by {ctx.ref}"


async def _dry_run(ctx: Ctx, affected: list[AffectedTask]) -> None:
    """Write what would be acted on, and end: nothing in the cluster is changed."""
    only = ctx.cancelled_task_ids()
    term = _terminator(ctx, Termination())
    pods, _ = await term.list_runners()
    sel = ctx.job_selector
    leases = await ctx.cleaner.held_leases(sel, only, job=ctx.instance)
    scratch, every_artifact = await ctx.cleaner.marked(sel, only, job=ctx.instance)
    deletable = await deletable_artifacts(ctx)
    results = await _results_keeper(ctx) if deletable else _keep_none

    def kept(obj: Obj) -> bool:  # a kept runner log is never deleted by a cleanup
        return is_kept_log(obj) or results(obj)

    doomed = [(k, o) for k, o in every_artifact if k in deletable and not kept(o)]
    artifacts = [(k, o) for k, o in every_artifact if not (k in deletable and not kept(o))]
    plan = Plan(
        runner_pods=sorted(p["metadata"]["name"] for p in pods)[:ctx.listed],
        leases=sorted(o["metadata"]["name"] for o in leases)[:ctx.listed],
        scratch_resources=sorted(f"{k.lower()}/{o['metadata']['name']}" for k, o in scratch + doomed)[:ctx.listed],
        artifacts=sorted(f"{k.lower()}/{o['metadata']['name']}" for k, o in artifacts)[:ctx.listed],
    )
    logs = ""
    if ctx.keeps_logs:
        plan.logs = plan.runner_pods
        logs = f", keep the log of {len(pods)} runner(s)"
    drain = ""
    if ctx.spec.mode == "Drain" and not ctx.forced:
        let_run, at_once = drain_split(affected)
        plan.drain_tasks = sorted(a.name for a in let_run)[:ctx.listed]
        plan.cancelled_at_once = sorted(a.name for a in at_once)[:ctx.listed]
        drain = (f"let {len(let_run)} running task(s) finish for up to {ctx.spec.drain_deadline_seconds}s "
                 f"({len(at_once)} changed at once), then ")
    ctx.status.plan = plan
    ctx.status.progress.runners_total = len(pods)
    ctx.status.set_condition("DryRun", True, "DryRun",
                             "dry run: status shows what would be affected; nothing was changed")
    if ctx.spec.cooperative_seconds and not ctx.forced:
        drain += f"give each runner up to {ctx.spec.cooperative_seconds}s to stop by itself, then "
    ctx.end(Phase.COMPLETED, f"dry run: would {drain}stop {len(pods)} runner(s), change {len(affected)} task(s), "
                             f"release {len(leases)} lease(s), delete {len(plan.scratch_resources)} resource(s), "
                             f"keep {len(artifacts)} artifact(s){logs}")


# ============================================================================ Drain (mode Drain)
async def drain_step(ctx: Ctx) -> StepResult:
    """mode Drain: the tasks not yet running get their new state at once; the running ones are
    let finish until spec.drainDeadlineSeconds (from when the drain began, recorded before the
    wait, so a resumed run keeps the deadline); then the next steps cancel what still runs,
    exactly as mode Cancel does. Forcing the cancellation ends the drain at once."""
    d = ctx.status.drain or DrainStatus()
    if ctx.forced and d.started_at is None:
        ctx.status.drain = d.model_copy(update={"ended_by": "Forced"})
        return StepResult(StepState.SKIPPED, "force: nothing is let finish")
    if d.started_at is None:
        d = await _begin_drain(ctx)
    started, deadline = parse_time(d.started_at), parse_time(d.deadline)
    assert started is not None and deadline is not None
    only = None if ctx.is_job else frozenset(a.name for a in ctx.affected())

    def seen(tally: DrainTally) -> None:
        d.still_running = len(tally.still_running)
        d.finished_in_window = tally.finished_in_window(d.running_at_start)
        ctx.status.progress.tasks_finished_in_drain = d.finished_in_window
        ctx.changed()

    drainer = TaskDrainer(ctx.kube, ctx.namespace, ctx.job_selector, me=ctx.me, started_at=started, only=only,
                          belongs=ctx.mine, clock=ctx.clock, log=ctx.log, on_tally=seen)
    ended = await drainer.wait(deadline, ctx.forced_now)
    seen(drainer.tally)
    d.ended_by, d.finished_at = ended, iso(ctx.clock.now())
    words = {"AllFinished": "every running task finished", **WINDOW_END_WORDS}[ended]
    msg = (f"drain ended ({words}): {d.finished_in_window} of {d.running_at_start} running task(s) finished in "
           f"the window, {d.still_running} still running (cancelled now)")
    await ctx.events.emit(ctx.body, "drained", "Drained", msg)
    return StepResult(message=msg)


async def _begin_drain(ctx: Ctx) -> DrainStatus:
    """Change the tasks that are not running now, then record the window (durably: the deadline
    must survive a restart)."""
    now = ctx.clock.now()
    if ctx.is_job:
        tasks = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
        affected = job_affected_tasks(tasks, _reason(ctx))
        known = {t["metadata"]["name"]: t for t in tasks}
    else:
        affected, known = ctx.affected(), {}
    let_run, at_once = drain_split(affected)
    res = await ctx.registry.apply(at_once, by=ctx.me, requester=ctx.requester, reason=_reason(ctx), known=known)
    for a, msg, attempts in res.failed:  # UpdateTaskStates tries them again after the window
        ctx.status.add_error("Drain", f"agenttask/{a.name}", msg, attempts)
    assert ctx.spec.drain_deadline_seconds is not None  # the CRD requires it with mode Drain
    d = DrainStatus(started_at=iso(now), deadline=iso(now + timedelta(seconds=ctx.spec.drain_deadline_seconds)),
                    running_at_start=len(let_run), still_running=len(let_run))
    ctx.status.drain = d
    await ctx.flush()
    await ctx.events.emit(ctx.body, "draining", "Draining",
                          f"letting {len(let_run)} running task(s) finish until {d.deadline}; "
                          f"{len(res.changed)} task(s) not yet running changed at once")
    return d


# ============================================================================ runners
async def _finished_task_ids(ctx: Ctx) -> frozenset[str]:
    """The ids of the job's tasks that reached Done or Failed by themselves: their runners are
    never forced (one label-selector list)."""
    tasks = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
    return frozenset(task_id(t) for t in tasks if task_state(t) in ENDED_BY_THEMSELVES)


def _terminator(ctx: Ctx, state: Termination) -> RunnerTerminator:
    async def forced(name: str) -> None:
        # like the task Events: one per runner up to the limit and as the Event budget allows
        # (the count is in status and metrics, every runner is in the log); a mass escalation
        # must not add a write per pod
        if len(state.forced) > ctx.settings.task_events_limit or not await ctx.events.emit(
                ctx.body, f"forced-{name}", "RunnerForced",
                f"runner pod {name} force-deleted " + (
                    f"(escalated by {ctx.escalated_by})" if ctx.escalated_by else
                    f"(grace {ctx.spec.effective_grace}s + {ctx.spec.escalate_after_seconds}s ran out)"),
                "Warning", detail=True):
            ctx.forced_unannounced += 1
            return
        ctx.forced_announced += 1

    def progress(t: Termination) -> None:
        p = ctx.status.progress
        p.runners_total = t.total
        p.runners_terminated = t.terminated
        p.runners_forced = len(t.forced & t.gone)
        ctx.status.runner_summary = runner_summary(p.runners_terminated, p.runners_total, p.runners_forced)
        ctx.changed()

    return RunnerTerminator(
        ctx.kube, ctx.namespace, ctx.runner_selector, grace=ctx.grace,
        escalate_after=ctx.spec.escalate_after_seconds, stuck_timeout=ctx.settings.stuck_timeout,
        concurrency=ctx.settings.concurrency, clock=ctx.clock, log=ctx.log, on_progress=progress,
        on_forced=forced, adopt_new=ctx.is_job, owner=ctx.me, task_filter=ctx.cancelled_task_ids(),
        live_requests=ctx.live_requests, belongs=ctx.mine, finished_tasks=lambda: _finished_task_ids(ctx),
        before_force=keeping.log_again(ctx), watches=ctx.runner_watches,
    )


# ============================================================================ KeepLogs (preserveLogs)
async def keep_logs_step(ctx: Ctx) -> StepResult:
    """Keep the end of each runner's log before any runner is deleted (necrocode.keeping: never
    fails the cancellation; a log not kept is reported)."""
    listed = ctx.listed_once.get("runners")  # SignalRunners' list: TerminateRunners takes it after us
    pods = listed[0] if listed is not None else (await _terminator(ctx, Termination()).list_runners())[0]
    return StepResult(message=await keeping.keep_runner_logs(ctx, pods))


async def signal_runners(ctx: Ctx) -> StepResult:
    if ctx.forced:
        return StepResult(StepState.SKIPPED, "force: runners are deleted without a cooperative stop")
    term = _terminator(ctx, Termination())
    pods, rv = await term.list_runners()
    ctx.listed_once["runners"] = (pods, rv)

    async def durable_total() -> None:  # written while the runners are signalled: no time of its own
        if ctx.status.progress.runners_total == 0:
            await ctx.make_total_durable(len(pods) - len(await term.find_foreign(pods)))

    readers = [p for p in pods if annotates(ctx.kind, ctx.spec.cooperative_seconds, ctx.contested, p)]
    n, _ = await together(term.signal(readers, _reason(ctx)), durable_total())
    msg = f"{n} runner(s) annotated necrocode.io/cancel-requested"
    if len(readers) < len(pods):
        msg += (f"; {len(pods) - len(readers)} get the graceful delete as their signal (no cooperative window, "
                f"not labelled {LABEL_SIGNAL}={SIGNAL_ANNOTATION})")
    return StepResult(message=msg)


async def cooperative_step(ctx: Ctx) -> StepResult:
    """spec.cooperativeSeconds > 0: the signalled runners get that long to end by themselves
    (their pod's phase Succeeded or Failed, or their pod gone) before TerminateRunners deletes
    what is left with its grace, then forces. The window (start, deadline) is recorded durably
    before the wait, so a resumed run keeps the deadline; it ends early when every runner has
    ended, and at once when the cancellation is forced. The runners that ended are counted
    (progress.runnersCooperative) and get the outcome Cooperative once their pod is gone."""
    c = ctx.status.cooperative or CooperativeStatus()
    if ctx.forced and c.started_at is None:
        return StepResult(StepState.SKIPPED, "force: no cooperative window")
    ctx.listed_once.pop("runners", None)  # stale after the window: TerminateRunners lists again
    term = _terminator(ctx, Termination())
    pods, _ = await term.list_runners()
    signalled = frozenset(p["metadata"]["name"] for p in pods) - await term.find_foreign(pods)
    if c.started_at is None:
        c = await _begin_window(ctx, pods, signalled)
    deadline = parse_time(c.deadline)
    assert deadline is not None
    earlier = {o.pod for o in ctx.status.runner_outcomes if o.outcome == "Cooperative"}

    def seen(tally: CooperativeTally) -> None:
        ctx.cooperative = frozenset(earlier | set(tally.ended))
        c.stopped = ctx.status.progress.runners_cooperative = max(c.stopped, len(ctx.cooperative))
        ctx.changed()

    window = CooperativeWindow(ctx.kube, ctx.namespace, ctx.runner_selector, signalled=signalled,
                               wanted=term.wanted, clock=ctx.clock, log=ctx.log, on_tally=seen)
    ended = await window.wait(deadline, ctx.forced_now)
    seen(window.tally)
    c.finished_at = iso(ctx.clock.now())
    ctx.status.cooperative = c
    assert ctx.cooperative is not None
    kept = [o for o in ctx.status.runner_outcomes if o.pod not in ctx.cooperative]
    ctx.status.runner_outcomes = ([RunnerOutcome(pod=n, outcome="Cooperative") for n in sorted(ctx.cooperative)]
                                  + kept)[:ctx.listed]
    words = {"AllEnded": "every runner ended by itself", **WINDOW_END_WORDS}[ended]
    msg = (f"cooperative window ended ({words}): {c.stopped} runner(s) stopped by themselves, "
           f"{len(window.tally.waiting)} still running (deleted now)")
    await ctx.events.emit(ctx.body, "cooperative-ended", "CooperativeStopEnded", msg)
    return StepResult(message=msg)


async def _begin_window(ctx: Ctx, pods: list[Obj], signalled: frozenset[str]) -> CooperativeStatus:
    """Signal the runners' AgentTasks too (for runners that read their task rather than their
    pod: the same annotation, necrocode.io/cancel-requested, with the pod's value; the task's
    state is left as it is), then record the window, durably."""
    now = ctx.clock.now()
    value = {p["metadata"]["name"]: ((p["metadata"].get("annotations") or {}).get(ANNOTATION_CANCEL_REQUESTED))
             for p in pods if p["metadata"]["name"] in signalled}
    by_task = {str(t): v for p in pods if (v := value.get(p["metadata"]["name"]))
               and (t := (p["metadata"].get("labels") or {}).get(LABEL_TASK))}
    if by_task:
        tasks = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)

        async def one(t: Obj) -> None:
            try:
                await ctx.kube.merge_patch(nc_path(ctx.namespace, "agenttasks", t["metadata"]["name"]),
                                           {"metadata": {"annotations": {ANNOTATION_CANCEL_REQUESTED:
                                                                         by_task[task_id(t)]}}})
            except ApiError as exc:  # the pod's annotation is the signal; the task's is a courtesy
                ctx.log.warning("signalling a runner's task failed", task=task_id(t), error=str(exc))

        todo = [t for t in tasks if task_id(t) in by_task and
                ((t["metadata"].get("annotations") or {}).get(ANNOTATION_CANCEL_REQUESTED) != by_task[task_id(t)])]
        await bounded(todo, one, ctx.settings.concurrency)
    c = CooperativeStatus(started_at=iso(now), deadline=iso(window_deadline(now, ctx.spec.cooperative_seconds)))
    ctx.status.cooperative = c
    await ctx.flush()
    await ctx.events.emit(ctx.body, "cooperative", "CooperativeStop",
                          f"{len(signalled)} runner(s) may stop by themselves until {c.deadline}")
    return c


async def terminate_runners(ctx: Ctx) -> StepResult:
    listed = ctx.reuse("runners")
    # fresh: a SignalRunners of this run handed its list over and wrote the total
    fresh = listed is not None and ctx.durable_total is not None
    prior = prior_termination(ctx.status.progress, ctx.status.runner_outcomes, fresh=fresh)
    term = ctx.terminator = _terminator(ctx, prior)
    if ctx.escalated_by:
        term.escalate()
    reading = keeping.read_in_grace(ctx)
    try:
        out = await term.terminate(prior, listed=listed, before_delete=ctx.make_total_durable)
    except BaseException:
        if reading is not None:  # the bound ran out, or the operator stops: no waiting for it
            reading.task.cancel()
        raise
    finally:
        ctx.terminator = None
        await keeping.reading_done(reading)
    cooperative = ctx.cooperative if ctx.cooperative is not None else frozenset(
        o.pod for o in ctx.status.runner_outcomes if o.outcome == "Cooperative")
    # a cooperative runner whose pod went during the window is counted gone (from the durable
    # total) without a name: it is named here
    gone = out.gone | (cooperative - set(out.stuck))
    outcomes = [RunnerOutcome(pod=n, outcome=outcome_of(n, forced=n in out.forced, let_go=n in out.let_go,
                                                           cooperative=n in cooperative))
                for n in sorted(gone) if not n.startswith("(")]
    outcomes += [RunnerOutcome(pod=n, outcome="Stuck") for n in sorted(out.stuck)]
    outcomes.sort(key=lambda o: (o.outcome != "Forced", o.outcome != "Stuck", o.pod))
    ctx.status.runner_outcomes = outcomes[:ctx.listed]
    for name, why in out.stuck.items():
        ctx.status.add_error("TerminateRunners", f"pod/{name}", why, max(1, out.attempts.get(name, 1)))
    for name, why in sorted(out.stuck.items())[:ctx.settings.task_events_limit]:
        await ctx.events.emit(ctx.body, f"stuck-{name}", "RunnerStuck", f"runner pod {name}: {why}", "Warning")
    msg = f"{out.terminated}/{out.total} runner(s) gone, {len(out.forced & out.gone)} forced"
    if out.let_go:
        msg += f", {len(out.let_go)} let go with their grace (their task finished)"
    more = ctx.forced_unannounced  # this run's, over its attempts (a restart's summary counts its own)
    if more > 0:
        await ctx.events.emit(ctx.body, "forced-more", "RunnersForced",
                              f"{more} more runner pod(s) force-deleted besides the {ctx.forced_announced} with an "
                              f"Event of their own ({_why_no_event(ctx)}; status.progress.runnersForced counts them "
                              "all)", "Warning")
    if out.stuck:
        return StepResult(StepState.FAILED, msg + f", {len(out.stuck)} stuck",
                          transient=any(n in out.transient for n in out.stuck))
    return StepResult(message=msg)


# ============================================================================ tasks
async def _defer_to_earlier_task_cancellations(ctx: Ctx) -> None:
    """A TaskCancellation of this job requested first keeps its tasks: wait (bounded) until those
    still in flight have finished, then cancel what they left. Each task is then cancelled, and
    counted, by exactly one record whatever the timing."""
    limit = deferral_limit(ctx.settings.stuck_timeout, ctx.spec.escalate_after_seconds)
    started = ctx.clock.monotonic()
    created = (ctx.body.get("metadata") or {}).get("creationTimestamp")
    while True:
        items, _ = await ctx.kube.list_all(nc_path(ctx.namespace, PLURAL[TASK_CANCELLATION]))
        waiting = earlier_task_cancellations(items, ctx.spec.job_name, created)
        if not waiting:
            return
        if ctx.clock.monotonic() - started >= limit:
            ctx.log.warning("earlier task cancellations still running; going on without them", waiting=waiting)
            ctx.contested = True
            return
        ctx.status.step(ctx.step_name).message = "waiting for " + ", ".join(f"taskcancellation/{n}" for n in waiting[:5])
        ctx.changed()
        await ctx.clock.sleep(0.5)


async def update_task_states(ctx: Ctx) -> StepResult:
    reason = _reason(ctx)
    if ctx.is_job:
        await _defer_to_earlier_task_cancellations(ctx)
        # level-triggered: every unfinished task of the job, plus those we already changed
        tasks = await ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance)
        targets = [a for a in job_affected_tasks(tasks, reason)]
        targets += [
            AffectedTask(task_id=task_id(t), name=t["metadata"]["name"],
                         before=((t.get("status") or {}).get("cancellation") or {}).get("previousState", "Unknown"),
                         after=TaskState.CANCELLED.value, reason=reason)
            for t in tasks
            if task_state(t) == TaskState.CANCELLED and changed_by(t, ctx.me)
        ]
        ctx.status.progress.tasks_unaffected = sum(
            1 for t in tasks if task_state(t) in FINISHED_TASK_STATES and not changed_by(t, ctx.me))
        # the job's tasks that reached Done or Failed since ClassifyTasks counted them (dispatch
        # is blocked: none starts, so every one of them was running or waiting then)
        ended = sum(1 for t in tasks if task_state(t) in ENDED_BY_THEMSELVES)
        ctx.status.progress.finished_during_cancel = max(0, ended - ctx.status.progress.finished_before_cancel)
    else:
        targets = ctx.affected()
        tasks = []
    res = await ctx.registry.apply(targets, by=ctx.me, requester=ctx.requester, reason=reason,
                                   known={t["metadata"]["name"]: t for t in tasks})
    p = ctx.status.progress
    p.tasks_cancelled = sum(1 for a in res.changed if a.after == TaskState.CANCELLED.value)
    p.tasks_blocked = sum(1 for a in res.changed if a.after == TaskState.BLOCKED.value)
    if not ctx.is_job:
        p.tasks_unaffected = len(res.unaffected)
        p.finished_during_cancel = sum(1 for _, state in res.unaffected if state in ENDED_BY_THEMSELVES)
    if ctx.is_job:
        # a task's state before the cancellation: as first recorded (ClassifyTasks, or a run
        # before a restart), not as found now (a task set live again by a late writer is
        # cancelled again, and was not Running before the cancellation)
        before = {a.name: a.before for a in ctx.status.affected_tasks if a.before != "Unknown"}
        merged = [a.model_copy(update={"before": before[a.name]}) if a.name in before else a for a in res.changed]
        ctx.status.affected_tasks = sorted(merged, key=lambda a: a.name)[:ctx.listed]
        ctx.status.affected_tasks_total = len(merged)
    else:  # mark those that finished meanwhile
        left = {a.name: state for a, state in res.unaffected}
        ctx.affected_all = [
            a if a.name not in left else a.model_copy(update={"after": left[a.name],
                                                              "reason": f"{left[a.name]} meanwhile; left as it is"})
            for a in ctx.affected()
        ]
        ctx.status.affected_tasks = ctx.affected_all[:ctx.listed]
    for a, msg, attempts in res.failed:
        ctx.status.add_error("UpdateTaskStates", f"agenttask/{a.name}", msg, attempts)
    await _task_events(ctx, res.changed)
    if ctx.is_job:
        words = f"cancelled by {ctx.ref}{_for(ctx)}: {reason}"
        # from the job as our last write left it (BlockDispatch's): dispatch is blocked, so
        # nothing is expected to change it meanwhile; if something did, the write's
        # resourceVersion makes it 409 and the job is read again
        job = ctx.job = await ctx.registry.set_job_phase(ctx.spec.job_name, JobPhase.CANCELLED, words, known=ctx.job)
        await ctx.events.emit(job, "job-cancelled", "Cancelled", words)
    msg = f"{p.tasks_cancelled} task(s) cancelled"
    if p.tasks_blocked:
        msg += f", {p.tasks_blocked} blocked"
    msg += f", {p.tasks_unaffected} left as they were"
    if p.finished_during_cancel:
        msg += f" ({p.finished_during_cancel} finished by themselves during the cancellation: kept as they ended)"
    if res.failed:
        return StepResult(StepState.FAILED, msg + f", {len(res.failed)} failed", transient=res.transient)
    return StepResult(message=msg)


def _why_no_event(ctx: Ctx) -> str:
    """Why some tasks or runners of a summary have no Event of their own: the two limits."""
    s = ctx.settings
    budget = f"the operator's Event budget of {s.event_qps:g}/s" if s.event_qps > 0 else ""
    return " and ".join(w for w in (f"at most {s.task_events_limit} per cancellation", budget) if w)


async def _task_events(ctx: Ctx, changed: list[AffectedTask]) -> None:
    """An Event on each changed AgentTask, for the first task_events_limit of them (by name, so a
    resumed step picks the same ones) as the operator's Event budget allows; one summary Event on
    the AgentJob for the rest."""
    ordered = sorted(changed, key=lambda a: a.name)
    for a in ordered:
        if a.name in ctx.task_events:
            continue  # asked by an earlier attempt of this run
        involved = {"apiVersion": "necrocode.io/v1alpha1", "kind": "AgentTask",
                    "metadata": {"name": a.name, "namespace": ctx.namespace, "uid": None}}
        ctx.task_events[a.name] = len(ctx.task_events) < ctx.settings.task_events_limit and await ctx.events.emit(
            involved, f"task-{a.name}", a.after, f"{a.after} by {ctx.ref}: {a.reason}", detail=True)
    rest = [a for a in ordered if not ctx.task_events[a.name]]
    if rest:
        counts: dict[str, int] = {}
        for a in rest:
            counts[a.after] = counts.get(a.after, 0) + 1
        what = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        job = ctx.job or {"apiVersion": "necrocode.io/v1alpha1", "kind": "AgentJob",
                          "metadata": {"name": ctx.spec.job_name, "namespace": ctx.namespace, "uid": None}}
        await ctx.events.emit(job, "tasks-more", "TasksChanged",
                              f"{what} by {ctx.ref} besides the {len(ordered) - len(rest)} with an Event of their "
                              f"own ({_why_no_event(ctx)}; kubectl get agenttasks -l {ctx.job_selector})")


# ============================================================================ cleanup
def _keep_none(obj: Obj) -> bool:
    return False


async def _results_keeper(ctx: Ctx) -> Callable[[Obj], bool]:
    """Artifacts never deleted by a cancellation, whatever preserveArtifacts says: the results of
    tasks that ended Done or Failed by themselves (before the cancellation or while it ran: cancel
    versus complete, docs/design.md). preserveArtifacts: false deletes the artifacts of the work
    the cancellation stopped, and the job's own."""
    ended = await _finished_task_ids(ctx)  # Done or Failed: never a state a cancellation writes

    def keep(obj: Obj) -> bool:
        return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_TASK) in ended

    return keep


async def _slot_keeper(ctx: Ctx) -> Callable[[Obj], str | None]:
    """Repo slots stay held while their runner pod exists (a stuck or undeletable runner may
    still write to the workspace): by holder name or by task."""
    pods, _ = await _terminator(ctx, Termination()).list_runners()
    by_name = {p["metadata"]["name"] for p in pods}
    by_task = {str(t): p["metadata"]["name"] for p in pods
               if (t := ((p["metadata"].get("labels") or {}).get(LABEL_TASK)))}

    def keep(lease: Obj) -> str | None:
        holder = (lease.get("spec") or {}).get("holderIdentity")
        task = ((lease.get("metadata") or {}).get("labels") or {}).get(LABEL_TASK)
        pod = holder if holder in by_name else by_task.get(str(task)) if task else None
        return f"runner pod {pod} still exists" if pod else None

    return keep


async def deletable_artifacts(ctx: Ctx) -> frozenset[str]:
    """The kinds whose artifacts this request deletes: none unless preserveArtifacts is false,
    and then only those the requester may delete in the namespace (access.may). What is kept
    for that reason is said in status (artifactsKeptReason, condition ArtifactsKept) and in an
    Event, once."""
    if ctx.spec.preserve_artifacts:
        return frozenset()
    allowed: set[str] = set()
    refusals: list[str] = []
    for kind, plural in ctx.cleaner.kinds.items():
        decision = await access.may(ctx.kube, ctx.namespace, ctx.requester, "delete", plural)
        if decision.allowed:
            allowed.add(kind)
        elif decision.why not in refusals:
            refusals.append(decision.why)
    if refusals and ctx.status.artifacts_kept_reason is None:
        why = "artifacts kept although preserveArtifacts is false: " + "; ".join(refusals)
        ctx.status.artifacts_kept_reason = clip(why, 512)
        ctx.status.set_condition("ArtifactsKept", True, "RequesterMayNotDelete", clip(why, 512))
        ctx.log.warning("artifacts kept: the requester may not delete them", requester=ctx.requester.text,
                        why=why)
        await ctx.events.emit(ctx.body, "artifacts-kept", "ArtifactsKept", why, "Warning")
    return frozenset(allowed)


async def cleanup_resources(ctx: Ctx) -> StepResult:
    p = ctx.status.progress
    before = 0  # deleted by an earlier run of this step (the operator restarted meanwhile)

    async def before_delete(present: int) -> None:
        nonlocal before
        if p.resources_to_delete is None:
            p.resources_to_delete = present
            if present:  # durable before the first delete: a restart counts from it (none: no count)
                await ctx.flush()
        else:
            before = max(0, p.resources_to_delete - present)

    deletable = await deletable_artifacts(ctx)
    out = await ctx.cleaner.cleanup(ctx.job_selector, deletable, ctx.cancelled_task_ids(), by_uid=ctx.uid,
                                    keep=await _slot_keeper(ctx), before_delete=before_delete, job=ctx.instance,
                                    keep_artifact=await _results_keeper(ctx) if deletable else _keep_none)
    released = sorted(f"lease/{o['metadata']['name']}" for o in await ctx.cleaner.released_by(ctx.uid))
    prior = ctx.status.cleanup or CleanupReport()
    deleted = sorted(set(prior.deleted) | set(out.deleted))
    p.leases_released = len(released)
    p.resources_deleted = max(before + len(out.deleted), len(deleted))
    p.artifacts_preserved = len(out.preserved)
    ctx.status.cleanup = CleanupReport(released=released, deleted=deleted, preserved=sorted(out.preserved),
                                       failed=sorted(f"{o}: {m}" for o, m, _ in out.failed))
    for obj, msg, attempts in out.failed:
        ctx.status.add_error(ctx.step_name, obj, msg, attempts)
    msg = (f"{p.leases_released} lease(s) released, {p.resources_deleted} resource(s) deleted, "
           f"{p.artifacts_preserved} artifact(s) kept")
    if ctx.status.artifacts_kept_reason and out.preserved:
        msg += f" ({ctx.status.artifacts_kept_reason})"
    if out.failed:
        return StepResult(StepState.FAILED, msg + f", {len(out.failed)} not done", transient=out.transient)
    return StepResult(message=msg)


# ============================================================================ Verify
async def verify(ctx: Ctx) -> StepResult:
    findings = await _inspect(ctx)
    if findings.clean:
        return StepResult(message="no runner left, no lease held, no task live, job state consistent")
    ctx.log.warning("inconsistency found; repairing once", remaining=findings.describe())
    await _repair(ctx, findings)
    await ctx.clock.sleep(1.0)
    findings = await _inspect(ctx)
    if findings.clean:
        return StepResult(message="repaired an inconsistency; now consistent")
    known = ctx.status.reported()
    for obj, msg in findings.describe():
        if obj not in known:
            ctx.status.add_error("Verify", obj, msg)
    return StepResult(StepState.FAILED, f"{len(findings.describe())} inconsistency(ies) remain after one repair")


async def _inspect(ctx: Ctx) -> VerifyFindings:
    """What is left: runner pods, held slots, live tasks, the job's phase. The four reads do not
    depend on each other, so they go at once: Verify waits for one round trip, not four (a
    fixed cost of every cancellation, whatever its size). A failed read fails the step as
    before; the others are cancelled (concurrency.together)."""
    f = VerifyFindings()
    term = _terminator(ctx, Termination())

    async def job_phase() -> str | None:
        """The job's phase when it is not Cancelled (None: Cancelled, gone, another job of the
        name, or a TaskCancellation, which does not look)."""
        if not ctx.is_job:
            return None
        try:
            job = await ctx.kube.get(ctx.registry.job_path(ctx.spec.job_name))
        except NotFound:
            return None
        phase = (job.get("status") or {}).get("phase")
        same = ctx.instance is None or job["metadata"].get("uid") == ctx.instance.uid
        return (phase or "unset") if phase != JobPhase.CANCELLED.value and same else None

    (pods, _), leases, tasks, f.job_phase = await together(
        term.list_runners(),
        ctx.cleaner.held_leases(ctx.job_selector, ctx.cancelled_task_ids(), job=ctx.instance),
        ctx.registry.list_tasks(ctx.spec.job_name, instance=ctx.instance),
        job_phase())
    f.runner_pods = sorted(p["metadata"]["name"] for p in pods)
    f.held_leases = sorted(o["metadata"]["name"] for o in leases)
    if ctx.is_job:
        f.live_tasks = sorted(t["metadata"]["name"] for t in tasks if task_state(t) in LIVE_TASK_STATES)
    else:
        want = {a.name: a.after for a in ctx.affected()}
        f.live_tasks = sorted(t["metadata"]["name"] for t in tasks
                              if t["metadata"]["name"] in want and task_state(t) in LIVE_TASK_STATES
                              and want[t["metadata"]["name"]] != task_state(t).value)
    return f


async def _repair(ctx: Ctx, f: VerifyFindings) -> None:
    """One repair: a runner never deleted is deleted with its grace; one whose grace and
    escalation delay ran out is forced; one still inside its grace is left alone (Verify
    never takes grace away). Slots go back only when their runner is gone."""
    pods = {p["metadata"]["name"]: p for p in (await _terminator(ctx, Termination()).list_runners())[0]}
    finished = await _finished_task_ids(ctx) if pods else frozenset()

    async def repair_runner(name: str) -> None:
        pod = pods.get(name)
        if pod is None or (pod["metadata"].get("labels") or {}).get(LABEL_TASK) in finished:
            return  # gone; or its task finished by itself: let go, never forced (cancel versus complete)
        grace = repair_grace(pod, ctx.spec.escalate_after_seconds, ctx.grace, ctx.clock.now())
        if grace is None:
            return
        try:
            await ctx.kube.delete(core_path(ctx.namespace, "pods", name), uid=pod["metadata"].get("uid"),
                                  grace_period_seconds=grace, meta_only=True)
        except ApiError as exc:
            ctx.log.warning("verify: runner delete failed", runner=name, error=str(exc), attempts=exc.attempts)

    await bounded(f.runner_pods, repair_runner, ctx.settings.concurrency)
    if f.held_leases:
        out = CleanupOutcome()
        await ctx.cleaner.release_leases(ctx.job_selector, out, only=ctx.cancelled_task_ids(), by_uid=ctx.uid,
                                         keep=await _slot_keeper(ctx), job=ctx.instance)
        ctx.status.progress.leases_released = len(await ctx.cleaner.released_by(ctx.uid))
    if f.live_tasks:
        await update_task_states(ctx)
    if f.job_phase and ctx.is_job:
        await ctx.registry.set_job_phase(ctx.spec.job_name, JobPhase.CANCELLED, f"cancelled by {ctx.ref}")


# ============================================================================ the step lists
StepFn = Callable[[Ctx], Awaitable[StepResult]]


@dataclass(frozen=True)
class StepDef:
    name: str
    run: StepFn
    critical: bool = False
    """A failed critical step ends the cancellation Failed; others make it PartiallyCompleted."""


JOB_STEPS = (
    StepDef("Validate", validate, critical=True),
    StepDef("BlockDispatch", block_dispatch, critical=True),
    StepDef("ClassifyTasks", classify_tasks_step, critical=True),
    StepDef("SignalRunners", signal_runners),
    StepDef("TerminateRunners", terminate_runners),
    StepDef("UpdateTaskStates", update_task_states),
    StepDef("CleanupResources", cleanup_resources),
    StepDef("Verify", verify),
)

TASK_STEPS = (
    StepDef("Validate", validate, critical=True),
    StepDef("ComputeCascade", compute_cascade_step, critical=True),
    StepDef("SignalRunners", signal_runners),
    StepDef("TerminateRunners", terminate_runners),
    StepDef("UpdateTaskStates", update_task_states),
    StepDef("ReleaseResources", cleanup_resources),
    StepDef("Verify", verify),
)

STEPS = {JOB_CANCELLATION: JOB_STEPS, TASK_CANCELLATION: TASK_STEPS}
DRAIN = StepDef("Drain", drain_step)
"""mode Drain's step: after the tasks are known, before any runner is signalled."""
COOPERATIVE = StepDef("CooperativeStop", cooperative_step)
"""spec.cooperativeSeconds > 0: the window after the runners are signalled, before they are deleted."""


KEEP_LOGS = StepDef("KeepLogs", keep_logs_step)
"""preserveLogs' step: after the runners are signalled (and their cooperative window), before
any is deleted."""


def steps_for(kind: str, mode: str = "Cancel", cooperative_seconds: int = 0, logs: bool = False) -> tuple[StepDef, ...]:
    """The map of a cancellation of `kind` in `mode`: mode Cancel's steps are the kind's table;
    mode Drain adds its Drain step after the tasks are classified (the cascade computed); a
    cooperative window (cooperativeSeconds > 0) its CooperativeStop step after SignalRunners;
    `logs` (policies.resume.keeps_logs) KeepLogs just before TerminateRunners. A record's status
    lists exactly the steps its cancellation takes."""
    steps = STEPS[kind]
    if mode == "Drain":
        at = _index(steps, "SignalRunners")
        steps = (*steps[:at], DRAIN, *steps[at:])
    if cooperative_seconds > 0:
        at = _index(steps, "SignalRunners") + 1
        steps = (*steps[:at], COOPERATIVE, *steps[at:])
    if logs:
        at = _index(steps, "TerminateRunners")
        steps = (*steps[:at], KEEP_LOGS, *steps[at:])
    return steps


def _index(steps: tuple[StepDef, ...], name: str) -> int:
    return next(i for i, d in enumerate(steps) if d.name == name)
