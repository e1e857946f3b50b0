"""The one model of cancellation records and tasks that the CLI and the REST API share (pure, no I/O).

Both read the same JobCancellation/TaskCancellation objects and AgentTasks; how they are
ordered, which belong to a job, which one is "the" cancellation of a job and how a task is
found must not depend on which front end asks. The operator identifies a task the same way
(`task_id`, used by planning).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from necrocode.model import FINISHED_JOB_PHASES, LABEL_JOB, LABEL_TASK, CancellationResult, Phase
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
    return found if phase is None else in_phase(found, phase)


# ----------------------------------------------------------------------------- reading and choosing records
def result_of(record: Obj) -> CancellationResult:
    """The record as the front ends show it: its identity and status (an unreadable status
    reads as an empty one, never an error)."""
    return CancellationResult.from_object(record)


def started_at(record: Obj) -> str | None:
    """When the record's work started: status.startedAt, else its creation (the operator has not
    picked it up yet); None when neither is known."""
    meta = record.get("metadata") or {}
    return (record.get("status") or {}).get("startedAt") or meta.get("creationTimestamp") or None


def in_phase(records: Iterable[Obj], phase: Phase) -> list[Obj]:
    """The records in `phase` (an unreadable status reads as Pending), in the order given."""
    return [o for o in records if result_of(o).status.phase == phase]


def graceful_running(records: Iterable[Obj], job_id: str, task_id_: str | None = None) -> Obj | None:
    """The newest record of job `job_id` (of its task `task_id_`; None: of the whole job) still
    running gracefully: not forced, not a dry run, not finished. What a forced request escalates
    (spec.force to true) instead of asking again."""
    for o in of_job(records, job_id):
        spec = o.get("spec") or {}
        if spec.get("taskId") == task_id_ and not spec.get("force") and not spec.get("dryRun") and not is_finished(o):
            return o
    return None


def jobs_selector(job_ids: Iterable[str]) -> str | None:
    """One label selector for the records of several jobs (`necrocode.io/job in (a,b)`, names
    sorted); None when there is none or a name cannot be a label value."""
    names = sorted(set(job_ids))
    if not names or not all(label_ok(j) for j in names):
        return None
    return f"{LABEL_JOB} in ({','.join(names)})"


# ----------------------------------------------------------------------------- jobs
def jobs_to_cancel(jobs: Iterable[Obj], named: Collection[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Of the AgentJobs a label selector matched, by name: those to cancel besides the `named`
    ones (not finished), and those skipped because they finished, with their phase."""
    cancel: list[str] = []
    skipped: list[tuple[str, str]] = []
    for job in sorted(jobs, key=lambda j: str(j["metadata"]["name"])):
        name, phase = str(job["metadata"]["name"]), str((job.get("status") or {}).get("phase") or "")
        if name in named:
            continue
        if phase in FINISHED_JOB_PHASES:
            skipped.append((name, phase))
        else:
            cancel.append(name)
    return cancel, skipped
