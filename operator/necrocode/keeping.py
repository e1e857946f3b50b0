"""The runners' kept logs in a cancellation (spec.preserveLogs): the KeepLogs step's reading,
the reading again inside the grace, and the one right before a runner is forced; what the
status says of them. necrocode.logkeeper reads and writes; this decides when, and records.

Why three readings: the first (after the runners are told, before any is deleted) is the one
that is always possible; a runner that saves its work in its grace prints more after it, and a
kubelet removes a deleted pod's dead container, log included, as soon as it kills it, so the
second is made shortly before the grace ends; the third catches a runner still there when it
is forced (a kubelet that did not kill it). Why never a failure of the cancellation: the runners
were stopped, which is what it is for; a log lost is visible instead (status.logs with its
error, progress.logsFailed, the LogsKept condition, a LogNotKept Warning Event).

The steps' Ctx is passed in as a LogCtx (a module steps imports must not import steps).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from necrocode.clock import Clock
from necrocode.events import EventRecorder
from necrocode.kube import Kube
from necrocode.logkeeper import RunnerLogs
from necrocode.logs import Bound
from necrocode.model import API_VERSION, CancellationSpec, CancellationStatus, clip
from necrocode.settings import Settings

Obj = dict[str, Any]


class LogCtx(Protocol):
    """What of a cancellation's context (steps.Ctx) the keeping of its runners' logs uses."""

    kube: Kube
    settings: Settings
    clock: Clock
    namespace: str
    spec: CancellationSpec
    status: CancellationStatus
    log: Bound
    events: EventRecorder
    body: Obj
    forced_now: asyncio.Event
    runner_logs: RunnerLogs | None

    def changed(self) -> None: ...

    @property
    def keeps_logs(self) -> bool: ...

    @property
    def forced(self) -> bool: ...

    @property
    def grace(self) -> int: ...

    @property
    def listed(self) -> int: ...


def keeper(ctx: LogCtx) -> RunnerLogs:
    """The cancellation's RunnerLogs (from status in a resumed run). The kept logs are owned by the
    AgentJob instance: an artifact of the job, kept as long as the job whatever happens to the
    cancellation record (its TTL), and gone with the job by garbage collection."""
    if ctx.runner_logs is None:
        s = ctx.settings
        uid = ctx.status.job_uid or ""
        owner = {"apiVersion": API_VERSION, "kind": "AgentJob", "name": ctx.spec.job_name, "uid": uid} if uid else None
        ctx.runner_logs = RunnerLogs(ctx.kube, ctx.namespace, job=ctx.spec.job_name, job_uid=uid, owner=owner,
                                     tail_kib=s.log_tail_kib, read_timeout=s.log_read_timeout,
                                     concurrency=s.concurrency, log=ctx.log, kept=ctx.status.logs)
    return ctx.runner_logs


def record(ctx: LogCtx, logs: RunnerLogs) -> str:
    """status.logs (those not kept first, capped), the exact counts, and the LogsKept condition.
    Returns the step's message."""
    p = ctx.status.progress
    ctx.status.logs = sorted(logs.entries, key=lambda k: (k.error is None, k.pod))[:ctx.listed]
    p.logs_kept, p.logs_failed = logs.kept, logs.failed
    msg = f"{p.logs_kept} runner log(s) kept"
    if p.logs_failed:
        first = next(k for k in ctx.status.logs if k.error)
        msg += f", {p.logs_failed} not kept (pod/{first.pod}: {first.error})"
        ctx.status.set_condition("LogsKept", False, "LogsNotKept", clip(msg, 1024))
    else:
        ctx.status.set_condition("LogsKept", True, "Kept", msg)
    ctx.changed()
    return msg


async def keep_runner_logs(ctx: LogCtx, pods: Sequence[Obj]) -> str:
    """The KeepLogs step: every runner's log, read within one log_keeping_bound. A forced
    request (spec.force at creation) still waits for it (one bounded reading; the user asked for
    both); an escalation to force ends the wait at once, those not read by then listed as not
    kept. Returns the step's message."""
    logs = keeper(ctx)
    await logs.keep(pods, stop=ctx.forced_now if not ctx.spec.force else None)
    msg = record(ctx, logs)
    lost = sorted((k for k in logs.entries if k.error), key=lambda k: k.pod)
    for k in lost[:ctx.settings.task_events_limit]:
        await ctx.events.emit(ctx.body, f"log-not-kept-{k.pod}", "LogNotKept",
                              clip(f"the log of runner pod {k.pod} was not kept: {k.error}", 1024), "Warning")
    return msg


@dataclass
class GraceReading:
    task: asyncio.Task[None]
    started: bool = False


def read_in_grace(ctx: LogCtx) -> GraceReading | None:
    """Read the kept runners' logs again inside their grace, min(1s, grace/2) before it ends
    (counted from now: the runners are deleted right after), in the background: the runners'
    termination never waits for it. None when there is no grace to read in (forced)."""
    if not ctx.keeps_logs or ctx.forced or ctx.grace <= 0:
        return None
    logs = keeper(ctx)
    delay = ctx.grace - min(1.0, ctx.grace / 2)

    async def read() -> None:
        await ctx.clock.sleep(delay)
        if ctx.forced:  # escalated meanwhile: the runners are forced now, nothing to wait for
            return
        reading.started = True
        await logs.reread()
        record(ctx, logs)

    reading = GraceReading(asyncio.create_task(read()))
    return reading


async def reading_done(reading: GraceReading | None) -> None:
    """The runners are gone: a reading in grace not begun has nothing left to read; one under
    way ends within its bound (policies.resume.log_windows counts it)."""
    if reading is None:
        return
    if not reading.started:
        reading.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading.task


def log_again(ctx: LogCtx) -> Callable[[str], Awaitable[None]] | None:
    """The terminator's hook right before it force-deletes a runner whose grace ran out: its log
    read once more. Not after an escalation (force means now), nor for a forced request (its
    runners had no grace to print in)."""
    if not ctx.keeps_logs:
        return None

    async def again(pod: str) -> None:
        if ctx.forced:
            return
        logs = keeper(ctx)
        if await logs.again(pod):
            record(ctx, logs)

    return again
