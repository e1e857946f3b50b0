"""Pure decisions: what to cancel, terminate and release, and when to escalate or retry.

Nothing here does I/O or reads a clock: callers pass `now` in. The executors (terminator,
cleaner, taskregistry) carry these decisions out against the API.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from necrocode.model import (
    ANNOTATION_CANCEL_REQUESTED,
    FINISHED_JOB_PHASES,
    FINISHED_TASK_STATES,
    JOB_CANCELLATION,
    LABEL_DISPATCH_BLOCKED,
    LABEL_JOB_UID,
    LABEL_SIGNAL,
    PENDING_TASK_STATES,
    SIGNAL_ANNOTATION,
    TASK_CANCELLATION,
    TERMINAL_PHASES,
    AffectedTask,
    ConditionStatus,
    JobPhase,
    Phase,
    Ref,
    TaskState,
    parse_time,
)
from necrocode.records import task_id as task_id  # the operator reads a task's id as the CLI and API do

Obj = Mapping[str, Any]


# ----------------------------------------------------------------------------- job instance
@dataclass(frozen=True)
class JobInstance:
    """One AgentJob's life: its uid and when it was created. A job deleted and created again
    under its old name is another instance; the label necrocode.io/job=<name> alone cannot tell
    their objects apart."""

    uid: str
    created: str | None = None


def belongs_to(obj: Obj, job: JobInstance | None, *, by_time: bool = False) -> bool:
    """Is `obj` (labelled with the job's name) one of this job instance's objects?

    In order: its necrocode.io/job-uid label, else an owner reference to an AgentJob, decide.
    An object with neither keeps the older contract (the name label is enough), except where a
    wrong match destroys work (`by_time`, for deleting artifacts): there it must not be older
    than the job itself. The API server stamps both times, and an object made before the job
    cannot be its work. (Not for everything: scratch made before its job is submitted would be
    left behind, and a runner of a deleted job is stopped rather than left running.)
    Without a known instance (a record from before instances were recorded) everything matches,
    as before."""
    if job is None or not job.uid:
        return True
    meta = obj.get("metadata") or {}
    label = (meta.get("labels") or {}).get(LABEL_JOB_UID)
    if label:
        return bool(label == job.uid)
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, Mapping) and o.get("kind") == "AgentJob"]
    if owners:
        return any(o.get("uid") == job.uid for o in owners)
    if not by_time:
        return True
    made, born = _time(meta.get("creationTimestamp")), _time(job.created)
    return made is None or born is None or made >= born


def _time(value: object) -> datetime | None:
    """A timestamp, or None for anything that is not one (a field someone else wrote)."""
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- tasks
def task_state(task: Obj) -> TaskState:
    raw = (task.get("status") or {}).get("state") or TaskState.PENDING.value
    try:
        return TaskState(raw)
    except ValueError:
        return TaskState.PENDING


@dataclass(frozen=True)
class Classification:
    """Tasks of a job split the way JobCancellation treats them (seed 5.2)."""

    running: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()


def is_running(task: Obj) -> bool:
    """At work: Running, or holding a runner, and not finished."""
    state = task_state(task)
    return state not in FINISHED_TASK_STATES and (state == TaskState.RUNNING or bool((task.get("status") or {}).get("runner")))


def classify_tasks(tasks: Iterable[Obj]) -> Classification:
    """running: has a runner or is Running; pending: Pending, Ready, Blocked; finished: left alone."""
    running: list[str] = []
    pending: list[str] = []
    finished: list[str] = []
    for t in tasks:
        state = task_state(t)
        name = t["metadata"]["name"]
        if state in FINISHED_TASK_STATES:
            finished.append(name)
        elif is_running(t):
            running.append(name)
        elif state in PENDING_TASK_STATES:
            pending.append(name)
        else:  # pragma: no cover - every state is covered above
            pending.append(name)
    return Classification(tuple(sorted(running)), tuple(sorted(pending)), tuple(sorted(finished)))


def job_affected_tasks(tasks: Iterable[Obj], reason: str) -> list[AffectedTask]:
    """Every unfinished task of a job, with its state now and the state it will get."""
    out = []
    for t in sorted(tasks, key=lambda o: o["metadata"]["name"]):
        state = task_state(t)
        if state in FINISHED_TASK_STATES:
            continue
        out.append(AffectedTask(
            task_id=task_id(t), name=t["metadata"]["name"], before=state.value,
            after=TaskState.CANCELLED.value, reason=reason, runner=(t.get("status") or {}).get("runner"),
        ))
    return out


def changed_by(task: Obj, ref: Ref) -> bool:
    """Did the request `ref` cancel or block this task? Told by uid: a TaskCancellation and a
    JobCancellation may share a name, and a request deleted and created again under its old
    name is another request. A record written before uids were recorded matches by name (and
    a block, which only a TaskCancellation writes, by name and kind)."""
    status = task.get("status")
    if not isinstance(status, Mapping):
        return False
    rec = status.get("cancellation")
    if isinstance(rec, Mapping) and rec.get("cancelledBy") == ref.name:
        uid, kind = rec.get("cancelledByUid"), rec.get("cancelledByKind")
        if uid:
            return bool(uid == ref.uid)
        return kind in (None, ref.kind)
    if status.get("blockedBy") == ref.name:
        uid = status.get("blockedByUid")
        return bool(uid == ref.uid) if uid else ref.kind == TASK_CANCELLATION
    return False


LIVE_TASK_STATES = frozenset({TaskState.PENDING, TaskState.READY, TaskState.RUNNING})
"""A task in one of these may still be dispatched or still run: what no cancelled task may be."""


class TaskWrite(enum.Enum):
    DONE = "done"
    """Ours already: the task carries this request's record and is not live."""
    UNAFFECTED = "unaffected"
    """Left as it is: it already has the target state, or it finished by itself."""
    WRITE = "write"


def task_write(task: Obj, after: str, by: Ref) -> TaskWrite:
    """What giving `task` the state `after` needs. Our record alone does not make it done: a
    late writer (a runner's last report, a dispatcher that had not seen the block) can set a
    task we cancelled back to Pending, Ready or Running, and then it is written again (Verify
    finds such a task, and its repair goes through here)."""
    state = task_state(task)
    if changed_by(task, by) and state not in LIVE_TASK_STATES:
        return TaskWrite.DONE
    if state.value == after or state in FINISHED_TASK_STATES:
        return TaskWrite.UNAFFECTED
    return TaskWrite.WRITE


def recorded_previous_state(task: Obj, by: Ref) -> str | None:
    """The state this request's own cancellation record says the task had before it (None: no
    record of ours). Writing a task again keeps it: what the task was before the cancellation,
    not what a late writer set."""
    if not changed_by(task, by):
        return None
    rec = (task.get("status") or {}).get("cancellation")
    prev = rec.get("previousState") if isinstance(rec, Mapping) else None
    return prev if isinstance(prev, str) and prev in {t.value for t in TaskState} else None


# ----------------------------------------------------------------------------- runner markers
@dataclass(frozen=True)
class Marker:
    """The cancel-requested annotation as one of our cancellations writes it."""

    by: str
    uid: str | None


def parse_marker(value: object) -> Marker | None:
    """The annotation's value, or None when it is not one of ours (absent, not JSON, JSON but not
    an object, no "by"): such a value is treated as "not signalled by us" and overwritten."""
    if not isinstance(value, str) or not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("by"), str) or not data["by"]:
        return None
    uid = data.get("uid")
    return Marker(by=data["by"], uid=uid if isinstance(uid, str) and uid else None)


def annotates(kind: str, cooperative_seconds: int, contested: bool, pod: Obj) -> bool:
    """Does this runner get the cancel-requested annotation before its graceful delete? Only where
    something reads it: a cooperative window (the runner stops by itself inside it), a runner
    that opted in (label necrocode.io/signal=annotation: it wants the reason before SIGTERM), a
    TaskCancellation (its annotation is also the marker that says which of two overlapping
    requests counts a runner), and a JobCancellation that went on while an earlier
    TaskCancellation of its job was still in flight (`contested`: the same arbitration). Else
    the graceful delete is the signal. Measured on a real kubelet (docs/benchmarks.md): an
    annotation followed at once by the delete reaches the pod's files a moment before its
    SIGTERM (0.1 s at the median), which gives the runner no time; the kubelet syncs the PATCH
    first, so the SIGTERM comes later (0.2 s median, up to 1 s, against 0.01 s without it); and
    in 6 of 110 samples it never arrived. A write per runner for no time to act: only where a
    runner asked for it. The reason is on the task and its Event either way."""
    if kind == TASK_CANCELLATION or cooperative_seconds > 0 or contested:
        return True
    meta = pod.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(LABEL_SIGNAL) == SIGNAL_ANNOTATION


def marker_of(pod: Obj) -> Marker | None:
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return parse_marker(annotations.get(ANNOTATION_CANCEL_REQUESTED)) if isinstance(annotations, Mapping) else None


def marker_is(marker: Marker | None, ref: Ref) -> bool:
    """Does the marker name this request (by uid; by kind/name for a marker without one)?"""
    if marker is None:
        return False
    return marker.uid == ref.uid if marker.uid else marker.by == ref.text


def foreign_marker(marker: Marker | None, ref: Ref, live: Mapping[str, str]) -> bool:
    """Is the runner signalled by another request that is still in flight (`live`: uid -> kind/name
    of the in-flight cancellations)? That request counts it; this one only waits until it is gone.
    A marker of a request that is finished or gone is stale: it is overwritten and the runner counted."""
    if marker is None or marker_is(marker, ref):
        return False
    return marker.uid in live if marker.uid else marker.by in live.values()


# ----------------------------------------------------------------------------- cascade
@dataclass(frozen=True)
class Cascade:
    """The dependents of one task through spec.dependsOn, and what was odd about the graph."""

    root: str
    dependents: tuple[str, ...]
    cycles: tuple[str, ...] = ()
    dangling: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        w = [f"dependsOn cycle through task {t}" for t in self.cycles]
        w += [f"task {t} depends on a task that does not exist" for t in self.dangling]
        return w


def compute_cascade(root: str, depends_on: Mapping[str, Sequence[str]]) -> Cascade:
    """Transitive dependents of `root`. `depends_on` maps taskId -> the taskIds it needs.

    Breadth-first over the reverse graph, so a cycle is visited once and reported, never looped;
    references to unknown taskIds are reported as dangling.
    """
    dependents_of: dict[str, list[str]] = {t: [] for t in depends_on}
    dangling: set[str] = set()
    for t, needs in depends_on.items():
        for n in needs:
            if n in dependents_of:
                dependents_of[n].append(t)
            else:
                dangling.add(t)
    seen: set[str] = set()
    cycles: set[str] = set()
    frontier = [root]
    while frontier:
        nxt: list[str] = []
        for t in frontier:
            for d in dependents_of.get(t, []):
                if d == root:
                    cycles.add(t)
                    continue
                if d in seen:
                    continue
                seen.add(d)
                nxt.append(d)
        frontier = nxt
    # cycles among the dependents that do not pass through the root
    for component in _strongly_connected(seen | {root}, dependents_of):
        if len(component) > 1 or any(n in dependents_of.get(n, []) for n in component):
            cycles.update(component - {root})
    return Cascade(root, tuple(sorted(seen)), tuple(sorted(cycles)), tuple(sorted(dangling)))


def _strongly_connected(nodes: set[str], graph: Mapping[str, Sequence[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a long chain), within `nodes`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            succ = [n for n in graph.get(node, []) if n in nodes]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp: set[str] = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == node:
                        break
                out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def task_affected_tasks(
    tasks: Iterable[Obj], root: str, cascade: bool, reason: str, me: Ref | None = None
) -> tuple[list[AffectedTask], Cascade]:
    """What a TaskCancellation does to each task (seed 5.3): the root becomes Cancelled; its
    unfinished dependents become Cancelled (cascade) or Blocked (no cascade). Given `me`, the
    dependents this request already changed are kept too (a resumed request recomputes the
    list it could not keep whole in its status, and counts its own work again)."""
    by_id = {task_id(t): t for t in tasks}
    graph = {tid: [str(d) for d in ((t.get("spec") or {}).get("dependsOn") or [])] for tid, t in by_id.items()}
    cas = compute_cascade(root, graph)
    out: list[AffectedTask] = []
    root_obj = by_id[root]
    out.append(AffectedTask(task_id=root, name=root_obj["metadata"]["name"], before=task_state(root_obj).value,
                            after=TaskState.CANCELLED.value, reason=reason,
                            runner=(root_obj.get("status") or {}).get("runner")))
    for tid in cas.dependents:
        t = by_id[tid]
        state = task_state(t)
        if state in FINISHED_TASK_STATES and not (me is not None and changed_by(t, me)):
            continue
        after = TaskState.CANCELLED if cascade else TaskState.BLOCKED
        if not cascade and state == TaskState.BLOCKED:
            after = TaskState.BLOCKED
        out.append(AffectedTask(task_id=tid, name=t["metadata"]["name"], before=state.value,
                                after=after.value, reason=f"dependency {root} cancelled",
                                runner=(t.get("status") or {}).get("runner") if cascade else None))
    return out, cas


# ----------------------------------------------------------------------------- escalation
@dataclass(frozen=True)
class RunnerClock:
    """When a deleted runner pod's grace ends and when it gets force-deleted.

    The grace end is the pod's own `metadata.deletionTimestamp` (the API server sets it to the
    deletion time plus the grace period), so the deadline survives an operator restart.
    """

    grace_end: datetime
    escalate_at: datetime


def runner_clock(pod: Obj, escalate_after_seconds: int) -> RunnerClock | None:
    ts = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
    if ts is None:
        return None
    return RunnerClock(ts, ts + timedelta(seconds=escalate_after_seconds))


def escalation_delay(clock: RunnerClock | None, now: datetime) -> float | None:
    """Seconds until this runner must be force-deleted: 0 means now; None means not deleted yet.

    Re-entrant: call it again at any time (after a restart too) and it gives the right answer.
    """
    if clock is None:
        return None
    return max(0.0, (clock.escalate_at - now).total_seconds())


def next_wakeup(delays: Iterable[float | None], ceiling: float) -> float:
    """How long a terminator may wait for watch events before some runner needs escalation."""
    pending = [d for d in delays if d is not None]
    return min([ceiling, *pending]) if pending else ceiling


# ----------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy of every API call (kube.Kube.request) and of every conflict loop
    (kube.Kube.conflict_retry): capped exponential backoff with jitter, a server's Retry-After
    honoured up to the cap, and a bounded number of attempts, so the time any call can take is
    known in advance (`budget`)."""

    attempts: int = 5
    base_seconds: float = 0.5
    factor: float = 2.0
    max_seconds: float = 30.0
    conflict_attempts: int = 10
    """Read-decide-write rounds of one object before a 409 Conflict is given up on."""

    def delays(self) -> list[float]:
        """The longest pauses between attempts: `attempts - 1` of them, exponential, capped."""
        return [min(self.max_seconds, self.base_seconds * self.factor**i) for i in range(self.attempts - 1)]

    def delay(self, attempt: int, jitter: float, retry_after: float | None = None) -> float:
        """The pause after failed attempt `attempt` (1-based). `jitter` in [0, 1) spreads the
        second half of the backoff ("equal jitter"), so many callers failing together do not
        come back together; a server's Retry-After wins when it asks for longer, up to the cap."""
        top = min(self.max_seconds, self.base_seconds * self.factor ** max(0, attempt - 1))
        pause = top / 2 + top / 2 * min(max(jitter, 0.0), 1.0)
        if retry_after is not None and retry_after > pause:
            pause = min(self.max_seconds, retry_after)
        return pause

    def budget(self, request_timeout: float) -> float:
        """The longest one call can take, retries included: every attempt timing out, every
        pause at the cap (Retry-After included)."""
        return self.attempts * request_timeout + (self.attempts - 1) * self.max_seconds


# ----------------------------------------------------------------------------- outcome
@dataclass
class VerifyFindings:
    """What the Verify step found still wrong; empty means consistent."""

    runner_pods: list[str] = field(default_factory=list)
    held_leases: list[str] = field(default_factory=list)
    live_tasks: list[str] = field(default_factory=list)
    job_phase: str | None = None

    @property
    def clean(self) -> bool:
        return not (self.runner_pods or self.held_leases or self.live_tasks or self.job_phase)

    def describe(self) -> list[tuple[str, str]]:
        out = [(f"pod/{p}", "runner pod still present") for p in self.runner_pods]
        out += [(f"lease/{x}", "repo slot still held for the job") for x in self.held_leases]
        out += [(f"agenttask/{t}", "task still Pending, Ready or Running") for t in self.live_tasks]
        if self.job_phase:
            out.append(("agentjob", f"job phase is {self.job_phase}, not Cancelled"))
        return out


def earlier_task_cancellations(task_cancellations: Iterable[Obj], job: str, created: str | None) -> list[str]:
    """The TaskCancellations of `job` requested no later than a JobCancellation (created at
    `created`) that are still in flight (a TaskCancellation named like the JobCancellation is
    another request: kinds are told apart). The job cancellation leaves their tasks to them, so
    each task is cancelled, and counted, by the earliest request that covers it."""
    mine = parse_time(created)
    terminal = {p.value for p in TERMINAL_PHASES}
    out = []
    for tc in task_cancellations:
        meta, spec = tc.get("metadata") or {}, tc.get("spec") or {}
        if spec.get("jobName") != job or spec.get("dryRun"):
            continue
        if (tc.get("status") or {}).get("phase") in terminal:
            continue
        when, other = parse_time(meta.get("creationTimestamp")), str(meta.get("name", ""))
        # timestamps have whole seconds: one created in the same second counts as earlier (a
        # later one finds the job claimed and ends as a duplicate at once, so waiting is short)
        if mine is None or when is None or when > mine:
            continue
        out.append(other)
    return sorted(out)


class Claim(enum.StrEnum):
    """What a new request does about the JobCancellation that claimed the job (if any)."""

    FREE = "free"            # nobody claimed it: go on (a JobCancellation claims it)
    MINE = "mine"            # this request claimed it (resumed)
    DUPLICATE = "duplicate"  # claimed by a request in flight or Completed: act on nothing
    TAKE = "take"            # the claimer ended Failed or PartiallyCompleted, or is gone: act on what is left
    FINISHED = "finished"    # the job is finished and no request of ours has work left on it


def dispatch_blocked(job: Obj) -> bool:
    """Does the job, as read, carry both marks of a blocked dispatch (model.BLOCKED_DISPATCH)?
    Then BlockDispatch has nothing to block (the claim blocked it in the same write)."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    spec = job.get("spec")
    dispatch = spec.get("dispatch") if isinstance(spec, dict) else None
    return labels.get(LABEL_DISPATCH_BLOCKED) == "true" and isinstance(dispatch, dict) and dispatch.get("blocked") is True


def claim_decision(me: Ref, claim_name: str | None, claim_uid: str | None, claimer: Obj | None,
                   job_phase: str) -> Claim:
    """Decide on the job's claim (annotations cancelled-by and cancelled-by-uid; `claimer` is the
    JobCancellation of that name as read now, None when it does not exist). A request that ended
    Failed or PartiallyCompleted, or that was deleted while the job was still being cancelled,
    never locks the job: a new request acts on what is left."""
    finished = job_phase in {p.value for p in FINISHED_JOB_PHASES}
    if not claim_name:
        return Claim.FINISHED if finished else Claim.FREE
    meta = (claimer or {}).get("metadata") or {}
    same = claimer is not None and (not claim_uid or meta.get("uid") == claim_uid)
    if me.kind == JOB_CANCELLATION and claim_name == me.name and (claim_uid == me.uid or not claim_uid):
        return Claim.MINE
    if not same:  # gone, or another request now has its name
        return Claim.FINISHED if finished else Claim.TAKE
    phase = ((claimer or {}).get("status") or {}).get("phase")
    if phase == Phase.REJECTED.value:
        return Claim.FINISHED if finished else Claim.FREE
    if phase in (Phase.FAILED.value, Phase.PARTIALLY_COMPLETED.value):
        # unless the job ended by itself since (Succeeded or Failed): then there is nothing to do
        return Claim.TAKE if not finished or job_phase == JobPhase.CANCELLED.value else Claim.FINISHED
    return Claim.DUPLICATE


def final_phase(errors: int, failed_critical: bool) -> Phase:
    if failed_critical:
        return Phase.FAILED
    return Phase.PARTIALLY_COMPLETED if errors else Phase.COMPLETED


IN_PROGRESS = "InProgress"
"""The reason of the conditions of a cancellation still at work."""


def phase_conditions(phase: Phase, message: str = "") -> list[tuple[str, ConditionStatus, str, str]]:
    """The conditions a cancellation in `phase` carries, by the Kubernetes API conventions, as
    (type, status, reason, message):

    - Running: True while it works, False once it ended (reason: the phase);
    - Succeeded: True when it ended Completed; False when it ended PartiallyCompleted, Failed or
      Rejected (reason: that phase, message: why); Unknown while it works. So
      `kubectl wait --for=condition=Succeeded` waits for success and `...=Succeeded=false` for
      the other ends;
    - Complete: only "finished", whatever the outcome (True once terminal, else False)."""
    if phase not in TERMINAL_PHASES:
        return [("Running", "True", IN_PROGRESS, message),
                ("Succeeded", "Unknown", IN_PROGRESS, message),
                ("Complete", "False", IN_PROGRESS, message)]
    ended = phase.value
    return [("Running", "False", ended, message),
            ("Succeeded", "True" if phase == Phase.COMPLETED else "False", ended, message),
            ("Complete", "True", ended, message)]


def runner_summary(terminated: int, total: int, forced: int) -> str:
    s = f"{terminated}/{total}"
    return f"{s} ({forced} forced)" if forced else s
