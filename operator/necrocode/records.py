"""The one model of cancellation records and tasks that the CLI and the REST API share (pure, no I/O).

Both read the same JobCancellation/TaskCancellation objects and AgentTasks; how they are
ordered, which belong to a job, which one is "the" cancellation of a job and how a task is
found must not depend on which front end asks. The operator identifies a task the same way
(`task_id`, used by planning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from necrocode.model import LABEL_JOB, LABEL_TASK, CancellationResult, Phase
from necrocode.naming import label_ok

Obj = dict[str, Any]


# ----------------------------------------------------------------------------- cancellation records
def newest_first(items: Iterable[Obj]) -> list[Obj]:
    """By creationTimestamp, newest first; ties (one-second resolution) by name, descending
    (generated names carry the time: …-cancel-<yyyymmddhhmmss>-…), then by kind: a total order."""
    def key(o: Obj) -> tuple[str, str, str]:
        meta = o.get("metadata") or {}
        return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""), str(o.get("kind") or "")
    return sorted(items, key=key, reverse=True)


def job_selector(job_id: str) -> str | None:
    """The label selector for a job's records (and tasks); None when the job's name cannot be
    a label value (longer than 63 characters): then list without one and keep `of_job`'s."""
    return f"{LABEL_JOB}={job_id}" if label_ok(job_id) else None


def of_job(records: Iterable[Obj], job_id: str) -> list[Obj]:
    """The records that cancel job `job_id` (spec.jobName; a label alone does not make one),
    newest first."""
    return newest_first(o for o in records if (o.get("spec") or {}).get("jobName") == job_id)


def is_finished(record: Obj) -> bool:
    """Whether the record's phase is final (an unreadable status reads as not started)."""
    return CancellationResult.from_object(record).status.terminal


def current(records: list[Obj]) -> Obj | None:
    """The job's cancellation: the newest still going on, else the newest one (records newest
    first, as `of_job` returns them); None when there is none. The REST API's cancellation-status."""
    return next((o for o in records if not is_finished(o)), records[0] if records else None)


def latest(records: list[Obj]) -> list[Obj]:
    """The newest record and every older one still going on (records newest first): what
    `necrocode job cancel-status` shows. Its first running record is `current`'s."""
    return records[:1] + [o for o in records[1:] if not is_finished(o)]


# ----------------------------------------------------------------------------- tasks
def task_id(task: Mapping[str, Any]) -> str:
    """A task's id within its job: spec.taskId, else its necrocode.io/task label, else its name."""
    spec = task.get("spec") or {}
    labels = (task.get("metadata") or {}).get("labels") or {}
    return str(spec.get("taskId") or labels.get(LABEL_TASK) or task["metadata"]["name"])


def task_selector(job_id: str, task_id_: str) -> str | None:
    """The narrowest label selector that finds task `task_id_` of job `job_id` (labels the
    values may be); None: list every task of the namespace and keep `is_task`'s."""
    parts = [f"{label}={value}" for label, value in ((LABEL_JOB, job_id), (LABEL_TASK, task_id_)) if label_ok(value)]
    return ",".join(parts) or None


def is_task(task: Obj, job_id: str, task_id_: str) -> bool:
    """Whether `task` is task `task_id_` of job `job_id`: its job (the necrocode.io/job label,
    else spec.job) and its id (`task_id`, as the operator reads it)."""
    labels = (task.get("metadata") or {}).get("labels") or {}
    job = labels.get(LABEL_JOB) or (task.get("spec") or {}).get("job")
    return bool(job == job_id and task_id(task) == task_id_)


def find_tasks(tasks: Iterable[Obj], job_id: str, task_id_: str) -> list[Obj]:
    """The tasks (listed with `task_selector`) that are task `task_id_` of job `job_id`."""
    return [t for t in tasks if is_task(t, job_id, task_id_)]


# ----------------------------------------------------------------------------- listings
def with_kind(items: Iterable[Obj], kind: str) -> list[Obj]:
    """Listed records with their `kind` (the items of a List carry none): the order's last
    tie-breaker, and how a front end tells a JobCancellation from a TaskCancellation."""
    return [{**o, "kind": kind} for o in items]


def history(items: Iterable[Obj], job_id: str | None = None, phase: Phase | None = None) -> list[Obj]:
    """The records as a history lists them: newest first; with `job_id` only that job's
    (`of_job`), with `phase` only those in it. The REST API's listCancellations."""
    found = of_job(items, job_id) if job_id else newest_first(items)
    return found if phase is None else [o for o in found if CancellationResult.from_object(o).status.phase == phase]
