"""The REST API's request and error bodies, and its parameter constraints.

Responses are the operator's own models (`necrocode.model.CancellationResult` with its
`CancellationStatus`), so a client reads exactly what the operator writes. Request bodies are
new models with the bounds of the CRDs (crds/*.yaml, generated from the same numbers) and
`extra="forbid"`; each one turns into the resource's spec through `CancellationSpec`, the
model the operator parses the spec with, so the API can never create what the operator would
read differently. They are strict: `"30"` is not an integer and `"true"` is not a boolean.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from necrocode.model import CancellationResult, CancellationSpec

# bounds of the CRDs' spec (crds/necrocode.io_*cancellations.yaml)
JOB_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
JOB_MAX = 253
TASK_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"  # a label value: tasks are found by label
TASK_MAX = 63
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAMESPACE_MAX = 63
NAME_PATTERN = JOB_PATTERN
REASON_MAX = 1024
REQUESTED_BY_MAX = 253
GRACE_MIN, GRACE_MAX, GRACE_DEFAULT = 0, 3600, 30
TTL_MIN, TTL_MAX = 0, 2**31 - 1  # the CRD's minimum; at most a Kubernetes Job's (int32), about 68 years
DRAIN_MIN, DRAIN_MAX = 1, 86400
COOPERATIVE_MIN, COOPERATIVE_MAX = 0, 3600
# the CRD's two rules (x-kubernetes-validations), word for word: the same request is refused the same way
DRAIN_NEEDS_DEADLINE = "mode Drain needs drainDeadlineSeconds: how long running tasks may go on before they are cancelled"
DEADLINE_ONLY_FOR_DRAIN = "drainDeadlineSeconds is only for mode Drain"
# ... and in the OpenAPI document, so that a generated client (or schemathesis) knows them: either mode Drain with
# an integer deadline, or mode Cancel (or none) without one (null reads as absent, like every optional field here)
DRAIN_RULES_SCHEMA = [
    {"properties": {"mode": {"const": "Drain"}, "drainDeadlineSeconds": {"type": "integer"}},
     "required": ["mode", "drainDeadlineSeconds"]},
    {"properties": {"mode": {"const": "Cancel"}, "drainDeadlineSeconds": {"type": "null"}}},
]

LIMIT_MIN, LIMIT_MAX, LIMIT_DEFAULT = 1, 500, 50
WAIT_TIMEOUT_MIN, WAIT_TIMEOUT_MAX, WAIT_TIMEOUT_DEFAULT = 1.0, 600.0, 60.0


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 30.0; strict mode alone would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]
"""An integer (or an integral number such as 30.0); never a string or a boolean."""
TtlSeconds = Annotated[int, Field(ge=TTL_MIN, le=TTL_MAX), BeforeValidator(_integral)]
"""An Integer within the TTL's bounds (the bounds first: so the OpenAPI document states them even
when the field may be null)."""
DrainSeconds = Annotated[int, Field(ge=DRAIN_MIN, le=DRAIN_MAX), BeforeValidator(_integral)]
"""The same for the drain deadline."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    reason: str = Field(default="", max_length=REASON_MAX,
                        description="Why; recorded on the cancellation, on every task and in events.")
    force: bool = Field(default=False, description="Delete runner pods at once (grace period 0).")
    grace_period_seconds: Integer = Field(default=GRACE_DEFAULT, alias="gracePeriodSeconds", ge=GRACE_MIN, le=GRACE_MAX,
                                      description="Grace each runner pod gets to stop.")
    dry_run: bool = Field(default=False, alias="dryRun",
                          description="Only report what would be affected (in status.plan); change nothing.")
    ttl_seconds_after_finished: TtlSeconds | None = Field(
        default=None, alias="ttlSecondsAfterFinished",
        description="Delete the record this many seconds after it finished (0: at once). Absent: the "
                    "operator's default (NECROCODE_DEFAULT_TTL_SECONDS), if it has one.")
    mode: Literal["Cancel", "Drain"] = Field(
        default="Cancel", description="Cancel: stop everything now. Drain: block dispatch, cancel pending and ready "
                                      "tasks, let running tasks finish until drainDeadlineSeconds, then cancel what "
                                      "still runs.")
    drain_deadline_seconds: DrainSeconds | None = Field(
        default=None, alias="drainDeadlineSeconds",
        description="Mode Drain (required there, and only there): how long running tasks may go on.")
    cooperative_seconds: Integer = Field(
        default=0, alias="cooperativeSeconds", ge=COOPERATIVE_MIN, le=COOPERATIVE_MAX,
        description="After signalling a runner, how long to wait for its pod to end by itself before deleting it "
                    "(0: delete at once, with its grace period).")
    preserve_logs: bool | None = Field(
        default=None, alias="preserveLogs",
        description="Save the tail of each runner's log into an artifact ConfigMap before its pod is deleted. "
                    "Absent: the operator's default.")

    # the CRD's rules on mode and deadline, refused here in its words (a 422) rather than by the API
    # server once the job was looked up
    @field_validator("drain_deadline_seconds")
    @classmethod
    def _deadline_only_for_drain(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("mode") == "Cancel":  # no mode in data: that error is enough
            raise PydanticCustomError("drain_deadline_without_drain", DEADLINE_ONLY_FOR_DRAIN)
        return value

    @model_validator(mode="after")
    def _drain_needs_deadline(self) -> Self:
        """(A missing field has no place of its own: this 422 is on the body.)"""
        if self.mode == "Drain" and self.drain_deadline_seconds is None:
            raise PydanticCustomError("drain_deadline_missing", DRAIN_NEEDS_DEADLINE)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["anyOf"] = DRAIN_RULES_SCHEMA
        return schema

    def _spec(self, job_id: str, requested_by: str, **more: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"jobName": job_id, "force": self.force, "gracePeriodSeconds": self.grace_period_seconds,
                                "dryRun": self.dry_run, "mode": self.mode, "cooperativeSeconds": self.cooperative_seconds,
                                **more}
        if self.drain_deadline_seconds is not None:
            spec["drainDeadlineSeconds"] = self.drain_deadline_seconds
        if self.preserve_logs is not None:
            spec["preserveLogs"] = self.preserve_logs
        if self.reason:
            spec["reason"] = self.reason
        if self.ttl_seconds_after_finished is not None:
            spec["ttlSecondsAfterFinished"] = self.ttl_seconds_after_finished
        if requested_by:
            spec["requestedBy"] = requested_by[:REQUESTED_BY_MAX]
        CancellationSpec.model_validate(spec)  # what the operator will read back
        return spec


class JobCancelRequest(_Request):
    """Body of `POST /api/jobs/{job_id}/cancel` (all fields optional; an empty body is fine)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "budget exceeded", "gracePeriodSeconds": 10}]})

    def spec(self, job_id: str, requested_by: str) -> dict[str, Any]:
        """The JobCancellation's spec."""
        return self._spec(job_id, requested_by)


class TaskCancelRequest(_Request):
    """Body of `POST /api/tasks/{task_id}/cancel`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"jobId": "job1", "reason": "wrong approach",
                                                               "cascade": False}]})

    job_id: str = Field(alias="jobId", min_length=1, max_length=JOB_MAX, pattern=JOB_PATTERN,
                        description="The job (AgentJob name) the task belongs to.")
    cascade: bool = Field(default=True, description="Also cancel the task's dependents (false: mark them Blocked).")

    def spec(self, task_id: str, requested_by: str) -> dict[str, Any]:
        """The TaskCancellation's spec."""
        return self._spec(self.job_id, requested_by, taskId=task_id, cascade=self.cascade)


class CancellationPage(BaseModel):
    """One page of the history, newest first."""

    items: list[CancellationResult]
    total: int = Field(description="How many cancellations match, on all pages.", ge=0)
    limit: int = Field(ge=LIMIT_MIN, le=LIMIT_MAX)
    offset: int = Field(ge=0)


class ErrorBody(BaseModel):
    """Every error but 422: one readable sentence."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", "gracePeriodSeconds"], ["query", "limit"], ...')
    msg: str = Field(description="Why it was refused.")
    type: str = Field(description="A stable code for the reason (pydantic's error type).")


class ValidationErrorBody(BaseModel):
    """422: each refused field with the reason."""

    detail: list[FieldError]


class Health(BaseModel):
    status: str = "ok"
