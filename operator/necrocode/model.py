"""The public contract as Python values: API names, label keys, and pydantic models of the
cancellation resources' spec and status (the seed's CancellationStatus/Record/Step/Result).

The status stored by the API server is the durable record of a cancellation: these models
read it back on resume and write it on every change, so their field names are the CRD's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

GROUP = "necrocode.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Label and annotation keys (fixed by the issues).
LABEL_JOB = "necrocode.io/job"
LABEL_TASK = "necrocode.io/task"
LABEL_ROLE = "necrocode.io/role"
ROLE_RUNNER = "runner"
LABEL_REPO_POOL = "necrocode.io/repo-pool"
LABEL_SLOT_STATE = "necrocode.io/slot-state"
LABEL_ARTIFACT = "necrocode.io/artifact"
LABEL_SCRATCH = "necrocode.io/scratch"
LABEL_DISPATCH_BLOCKED = "necrocode.io/dispatch-blocked"
BLOCKED_DISPATCH: dict[str, Any] = {"metadata": {"labels": {LABEL_DISPATCH_BLOCKED: "true"}},
                                    "spec": {"dispatch": {"blocked": True}}}
"""A job's dispatch blocked, as a merge patch: the label the admission policy for new runner
pods reads, and the field the dispatcher reads."""
LABEL_RELEASED_BY = "necrocode.io/released-by"
"""On a repo slot Lease we released: the uid of the cancellation that released it, so the count
of released slots is exact even when the operator died between a release and a status write."""
ANNOTATION_CANCEL_REQUESTED = "necrocode.io/cancel-requested"
LABEL_SIGNAL = "necrocode.io/signal"
"""On a runner pod, `annotation`: the runner reads the cancellation's reason from
ANNOTATION_CANCEL_REQUESTED (downward API) and wants it before its SIGTERM, whatever the
cancellation's spec (planning.annotates)."""
SIGNAL_ANNOTATION = "annotation"
ANNOTATION_CANCELLED_BY = "necrocode.io/cancelled-by"
ANNOTATION_CANCELLED_BY_UID = "necrocode.io/cancelled-by-uid"
"""With ANNOTATION_CANCELLED_BY on the AgentJob: the uid of the claiming JobCancellation, so a
request recreated under the same name is never taken for the one that claimed the job."""
ANNOTATION_ESCALATED_BY = "necrocode.io/escalated-by"
"""On a running cancellation: a forced request (kind/name) asked it to force its runners now."""
ANNOTATION_REQUESTER = "necrocode.io/requester"
"""On a cancellation: the user who created it, written by the API server at admission
(deploy/requester-policy.yaml) from the authenticated request; a client cannot choose it."""
ANNOTATION_REQUESTER_GROUPS = "necrocode.io/requester-groups"
"""With ANNOTATION_REQUESTER: that user's groups, comma separated (for access reviews)."""
ANNOTATION_FORCE_REQUESTER = "necrocode.io/force-requester"
"""On a cancellation whose spec.force was changed from false to true (an escalation): the user
who changed it, written by the API server at admission (deploy/requester-policy.yaml)."""
LABEL_KEPT_LOG = "necrocode.io/kept-log"
"""On an artifact ConfigMap that holds a runner's log tail (value "true"): kept by a cancellation
with preserveLogs, and never deleted by a cleanup, even with preserveArtifacts: false."""
ANNOTATION_LOG_OF = "necrocode.io/log-of"
"""On a kept log: the runner pod it was read from (an annotation: a pod name may be longer than
a label value)."""
LABEL_JOB_UID = "necrocode.io/job-uid"
"""Optional, on a job's pods, scratch and artifacts: the uid of the AgentJob they belong to, so
a job recreated under an old name never reaches the older job's objects (planning.belongs_to)."""
MESSAGE_LIMIT = 1024
"""Characters kept of any message written into a status (and of an Event message)."""
FIELD_MANAGER = "necrocode-cancel"
FINALIZER = "necrocode.io/operator"
"""kopf's finalizer on the cancellation records (it stops a record's daemon before it goes)."""

JOB_CANCELLATION = "JobCancellation"
TASK_CANCELLATION = "TaskCancellation"
PLURAL = {JOB_CANCELLATION: "jobcancellations", TASK_CANCELLATION: "taskcancellations"}


@dataclass(frozen=True)
class Ref:
    """A cancellation request by kind, name and uid: records are told apart by kind and uid,
    never by name alone (a TaskCancellation and a JobCancellation may share a name, and a
    request may be deleted and created again under its old name)."""

    kind: str
    name: str
    uid: str

    @property
    def text(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass(frozen=True)
class Requester:
    """Who asked for a cancellation. `verified`: recorded by the API server (the requester
    admission policy is installed and wrote the annotations); otherwise only what the client
    claimed in spec.requestedBy, shown but never trusted for an access decision."""

    username: str
    groups: tuple[str, ...] = ()
    verified: bool = False

    @property
    def text(self) -> str:
        return self.username if self.verified or not self.username else f"{self.username} (unverified)"


def requester_of(meta: dict[str, Any], claimed: str | None, *, policy_installed: bool) -> Requester:
    """The requester of a cancellation from its metadata: the API server's record when the policy
    that writes it is installed (an annotation alone proves nothing where anyone may write it),
    else the client's claim, unverified."""
    annotations = meta.get("annotations") or {}
    user = annotations.get(ANNOTATION_REQUESTER)
    if policy_installed and isinstance(user, str) and user:
        raw = annotations.get(ANNOTATION_REQUESTER_GROUPS)
        groups = tuple(g for g in raw.split(",") if g) if isinstance(raw, str) else ()
        return Requester(clip(user, 253), groups, verified=True)
    return Requester(clip(claimed or "", 253))


def force_requester_of(meta: dict[str, Any], *, policy_installed: bool) -> Requester | None:
    """Who turned spec.force on (escalated the cancellation), as the API server recorded it when
    the policy that writes it is installed, else the client's claim (unverified); None when the
    annotation is not there (force was set at creation, or nobody says who)."""
    user = (meta.get("annotations") or {}).get(ANNOTATION_FORCE_REQUESTER)
    if not isinstance(user, str) or not user:
        return None
    return Requester(clip(user, 253), verified=policy_installed)


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """At most `limit` characters, marked when cut (a status must stay under the API server's
    request size limit whatever the messages it quotes)."""
    return text if len(text) <= limit else text[: limit - 15] + "... (truncated)"


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class JobPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"


FINISHED_JOB_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED})


class TaskState(enum.StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"
    BLOCKED = "Blocked"
    CANCELLED = "Cancelled"


FINISHED_TASK_STATES = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})
PENDING_TASK_STATES = frozenset({TaskState.PENDING, TaskState.READY, TaskState.BLOCKED})


class Phase(enum.StrEnum):
    """Phase of a JobCancellation or TaskCancellation."""

    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    PARTIALLY_COMPLETED = "PartiallyCompleted"
    FAILED = "Failed"
    REJECTED = "Rejected"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.PARTIALLY_COMPLETED, Phase.FAILED, Phase.REJECTED})


class StepState(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


DONE_STEP_STATES = frozenset({StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED})


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", use_enum_values=False)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ----------------------------------------------------------------------------- spec
class CancellationSpec(_Model):
    """The spec both kinds share; `taskId`/`cascade` only exist on TaskCancellation."""

    job_name: str = Field(alias="jobName", min_length=1)
    reason: str = ""
    requested_by: str | None = Field(default=None, alias="requestedBy")
    force: bool = False
    grace_period_seconds: int = Field(default=30, alias="gracePeriodSeconds", ge=0, le=3600)
    escalate_after_seconds: int = Field(default=10, alias="escalateAfterSeconds", ge=0, le=3600)
    preserve_artifacts: bool = Field(default=True, alias="preserveArtifacts")
    ttl_seconds_after_finished: int | None = Field(default=None, alias="ttlSecondsAfterFinished", ge=0)
    dry_run: bool = Field(default=False, alias="dryRun")
    task_id: str | None = Field(default=None, alias="taskId")
    cascade: bool = True
    mode: Literal["Cancel", "Drain"] = "Cancel"
    """Drain: let running tasks finish until drain_deadline_seconds, then cancel what is left."""
    drain_deadline_seconds: int | None = Field(default=None, alias="drainDeadlineSeconds", ge=1, le=86400)
    cooperative_seconds: int = Field(default=0, alias="cooperativeSeconds", ge=0, le=3600)
    """How long a signalled runner may take to end by itself before its pod is deleted."""
    preserve_logs: bool | None = Field(default=None, alias="preserveLogs")
    """None: the operator's default (Settings.preserve_logs)."""

    @property
    def effective_grace(self) -> int:
        return 0 if self.force else self.grace_period_seconds


# ----------------------------------------------------------------------------- status
class Step(_Model):
    name: str
    state: StepState = StepState.PENDING
    started_at: str | None = Field(default=None, alias="startedAt")
    finished_at: str | None = Field(default=None, alias="finishedAt")
    message: str | None = None


class Progress(_Model):
    runners_total: int = Field(default=0, alias="runnersTotal")
    runners_terminated: int = Field(default=0, alias="runnersTerminated")
    runners_forced: int = Field(default=0, alias="runnersForced")
    tasks_cancelled: int = Field(default=0, alias="tasksCancelled")
    tasks_blocked: int = Field(default=0, alias="tasksBlocked")
    tasks_unaffected: int = Field(default=0, alias="tasksUnaffected")
    leases_released: int = Field(default=0, alias="leasesReleased")
    resources_deleted: int = Field(default=0, alias="resourcesDeleted")
    artifacts_preserved: int = Field(default=0, alias="artifactsPreserved")
    resources_to_delete: int | None = Field(default=None, alias="resourcesToDelete")
    """Scratch resources (and artifacts, when not kept) found when the cleanup began, written
    before the first delete: a resumed cleanup counts what went before it from this."""
    runners_cooperative: int = Field(default=0, alias="runnersCooperative")
    tasks_finished_in_drain: int = Field(default=0, alias="tasksFinishedInDrain")
    finished_during_cancel: int = Field(default=0, alias="finishedDuringCancel")
    """Affected tasks that reached Done or Failed by themselves while the cancellation ran (kept as they ended)."""
    finished_before_cancel: int = Field(default=0, alias="finishedBeforeCancel")
    """Tasks already Done or Failed when the cancellation classified the job's tasks."""
    logs_kept: int = Field(default=0, alias="logsKept")
    logs_failed: int = Field(default=0, alias="logsFailed")


class AffectedTask(_Model):
    task_id: str = Field(alias="taskId")
    name: str
    before: str
    after: str
    reason: str
    runner: str | None = None


class ErrorEntry(_Model):
    step: str
    object: str
    message: str
    attempts: int = 1


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    """The metadata.generation (spec) the condition was decided on."""


class RunnerOutcome(_Model):
    pod: str
    outcome: Literal["Terminated", "Forced", "Stuck", "AlreadyGone", "Cooperative", "TaskFinished"]
    """Cooperative: ended by itself inside the cooperative window; TaskFinished: its task reached
    Done or Failed during the cancellation, so it was let go gracefully, never forced."""


class Window(_Model):
    """A bounded wait of a cancellation (the drain, the cooperative stop), recorded when it
    begins so that a resumed run keeps the same deadline."""

    started_at: str | None = Field(default=None, alias="startedAt")
    deadline: str | None = None
    finished_at: str | None = Field(default=None, alias="finishedAt")


class DrainStatus(Window):
    running_at_start: int = Field(default=0, alias="runningAtStart")
    finished_in_window: int = Field(default=0, alias="finishedInWindow")
    still_running: int = Field(default=0, alias="stillRunning")
    ended_by: Literal["AllFinished", "Deadline", "Forced"] | None = Field(default=None, alias="endedBy")


class CooperativeStatus(Window):
    stopped: int = 0


class KeptLog(_Model):
    """One runner's log tail, saved into an artifact ConfigMap before its pod was deleted."""

    pod: str
    task: str | None = None
    config_map: str | None = Field(default=None, alias="configMap")
    bytes: int = 0
    truncated: bool = False
    error: str | None = None


class CleanupReport(_Model):
    released: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    preserved: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


class Plan(_Model):
    """What a cancellation acts on; written to status for dry runs."""

    runner_pods: list[str] = Field(default_factory=list, alias="runnerPods")
    leases: list[str] = Field(default_factory=list)
    scratch_resources: list[str] = Field(default_factory=list, alias="scratchResources")
    artifacts: list[str] = Field(default_factory=list)
    drain_tasks: list[str] = Field(default_factory=list, alias="drainTasks")
    """mode Drain: the running tasks that would be let finish."""
    cancelled_at_once: list[str] = Field(default_factory=list, alias="cancelledAtOnce")
    logs: list[str] = Field(default_factory=list)
    """preserveLogs: the runner pods whose log would be kept."""


class CancellationStatus(_Model):
    phase: Phase = Phase.PENDING
    message: str | None = None
    steps: list[Step] = Field(default_factory=list)
    progress: Progress = Field(default_factory=Progress)
    affected_tasks: list[AffectedTask] = Field(default_factory=list, alias="affectedTasks")
    runner_outcomes: list[RunnerOutcome] = Field(default_factory=list, alias="runnerOutcomes")
    drain: DrainStatus | None = None
    cooperative: CooperativeStatus | None = None
    logs: list[KeptLog] = Field(default_factory=list)
    cleanup: CleanupReport | None = None
    plan: Plan | None = None
    errors: list[ErrorEntry] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    started_at: str | None = Field(default=None, alias="startedAt")
    completed_at: str | None = Field(default=None, alias="completedAt")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    duplicate_of: str | None = Field(default=None, alias="duplicateOf")
    requested_by: str | None = Field(default=None, alias="requestedBy")
    """Who asked: the user the API server recorded (requesterVerified), else what spec.requestedBy claims."""
    requester_verified: bool | None = Field(default=None, alias="requesterVerified")
    job_uid: str | None = Field(default=None, alias="jobUid")
    """The AgentJob instance acted on (its uid, recorded by Validate): a resumed cancellation
    never acts on a job recreated under the same name meanwhile, nor on an older one's objects."""
    job_created_at: str | None = Field(default=None, alias="jobCreatedAt")
    artifacts_kept_reason: str | None = Field(default=None, alias="artifactsKeptReason")
    """Why artifacts were kept although preserveArtifacts is false (the requester may not delete them)."""
    runner_summary: str | None = Field(default=None, alias="runnerSummary")
    cascade_warnings: list[str] = Field(default_factory=list, alias="cascadeWarnings")
    errors_total: int | None = Field(default=None, alias="errorsTotal")
    """How many distinct errors there were; `errors` lists at most the list limit of them."""
    affected_tasks_total: int | None = Field(default=None, alias="affectedTasksTotal")
    """How many tasks the request affects; `affectedTasks` lists at most the list limit."""
    escalated: str | None = None
    """A forced request that found another one running gracefully: the one it escalated."""
    escalated_by: str | None = Field(default=None, alias="escalatedBy")
    """Set on a request escalated to force by a later forced request (kind/name)."""
    escalated_by_user: str | None = Field(default=None, alias="escalatedByUser")
    """Set on a request escalated to force by a change of its spec.force to true: who changed it
    (the annotation necrocode.io/force-requester, recorded by the API server)."""

    _limit: int = PrivateAttr(default=100)
    _error_keys: set[tuple[str, str]] = PrivateAttr(default_factory=set)

    def bound(self, limit: int) -> None:
        """Keep at most `limit` entries in each list of this status (the counts stay exact)."""
        self._limit = max(1, limit)
        self._error_keys = {(e.step, e.object) for e in self.errors}
        if self.errors_total is None or self.errors_total < len(self.errors):
            self.errors_total = len(self.errors) or None

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        s = Step(name=name)
        self.steps.append(s)
        return s

    def set_condition(self, type_: str, status: bool | ConditionStatus, reason: str, message: str = "") -> None:
        """Set a condition (Kubernetes API conventions): lastTransitionTime moves only when its
        status changes; observedGeneration is the generation this status was written for."""
        value: ConditionStatus = status if isinstance(status, str) else "True" if status else "False"
        for c in self.conditions:
            if c.type == type_:
                if c.status != value:
                    c.last_transition_time = iso(now_utc())
                c.status, c.reason, c.message = value, reason, message
                c.observed_generation = self.observed_generation
                return
        self.conditions.append(
            Condition(type=type_, status=value, reason=reason, message=message,
                      last_transition_time=iso(now_utc()), observed_generation=self.observed_generation)
        )

    def add_error(self, step: str, obj: str, message: str, attempts: int = 1) -> None:
        """Record one error (per step and object); the list keeps the first `limit` of them,
        errorsTotal counts them all."""
        message = clip(message)
        for e in self.errors:
            if e.step == step and e.object == obj:
                e.message, e.attempts = message, attempts
                return
        key = (step, obj)
        if key in self._error_keys:
            return
        self._error_keys.add(key)
        self.errors_total = (self.errors_total or 0) + 1
        if len(self.errors) < self._limit:
            self.errors.append(ErrorEntry(step=step, object=obj, message=message, attempts=attempts))

    def dump(self) -> dict[str, Any]:
        """The status as written: every list capped (the reason: one write must stay far below
        the API server's request size limit whatever the job; exact counts stand beside each
        list), every message clipped."""
        out = super().dump()
        n = self._limit
        for key in ("errors", "affectedTasks", "runnerOutcomes", "cascadeWarnings"):
            if isinstance(out.get(key), list):
                out[key] = out[key][:n]
        for part in ("cleanup", "plan"):
            for key, value in (out.get(part) or {}).items():
                if isinstance(value, list):
                    out[part][key] = [clip(str(v), 512) for v in value[:n]]
        if out.get("message"):
            out["message"] = clip(out["message"])
        for st in out.get("steps") or []:
            if st.get("message"):
                st["message"] = clip(st["message"])
        out["cascadeWarnings"] = [clip(w, 512) for w in out.get("cascadeWarnings") or []] or None
        if out["cascadeWarnings"] is None:
            del out["cascadeWarnings"]
        return out

    def clear_errors(self, step: str) -> None:
        """Forget a step's errors (it runs again: what it finds now is what counts)."""
        gone = {k for k in self._error_keys if k[0] == step}
        if gone:
            self._error_keys -= gone
            self.errors = [e for e in self.errors if e.step != step]
            self.errors_total = max(0, (self.errors_total or 0) - len(gone)) or None

    def reported(self) -> set[str]:
        """The objects an error is recorded for, in any step (listed, or beyond the list and counted)."""
        return {o for _, o in self._error_keys}

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


class CancellationResult(_Model):
    """What the CLI and REST API return: the resource's identity and its status."""

    kind: str
    name: str
    namespace: str
    job_name: str = Field(alias="jobName")
    task_id: str | None = Field(default=None, alias="taskId")
    status: CancellationStatus = Field(default_factory=CancellationStatus)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> CancellationResult:
        """The result view of a JobCancellation/TaskCancellation object as the API returns it
        (an unreadable status reads as an empty one, never an error)."""
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        try:
            status = CancellationStatus.model_validate(obj.get("status") or {})
        except ValidationError:
            status = CancellationStatus()
        return cls(kind=str(obj.get("kind") or JOB_CANCELLATION), name=str(meta.get("name") or ""),
                   namespace=str(meta.get("namespace") or ""), job_name=str(spec.get("jobName") or ""),
                   task_id=spec.get("taskId"), status=status)
