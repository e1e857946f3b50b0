"""What `cancel` asks for and how it asks: the new resource (Ask.body), created, or with
--force the escalation of the job's (task's) cancellation still running gracefully instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from necrocode import records
from necrocode.cli.connection import Conn
from necrocode.model import API_VERSION, PLURAL
from necrocode.naming import cancellation_labels, generate_name

Obj = dict[str, Any]


def running_graceful(conn: Conn, ns: str, kind: str, job_id: str, task_id: str | None) -> Obj | None:
    """The newest cancellation of this kind, job (and task) still running gracefully: what
    `cancel --force` escalates (spec.force to true) instead of asking again."""
    found = records.graceful_running(conn.list_all(PLURAL[kind], ns, records.job_selector(job_id)), job_id, task_id)
    return None if found is None else {**found, "kind": kind}


@dataclass(frozen=True)
class Ask:
    """What `cancel` asks for, the same for each job it cancels."""

    reason: str = ""
    force: bool = False
    grace_period: int | None = None
    dry_run: bool = False
    ttl: int | None = None
    drain: int | None = None
    """--drain: mode Drain with this deadline (seconds); None: mode Cancel (the CRD's default)."""
    cooperative: int | None = None
    keep_logs: bool | None = None
    """None: spec.preserveLogs left out, so the operator's default applies."""

    def body(self, kind: str, job_id: str, task_id: str | None = None, *, cascade: bool = True,
             user: str | None = None) -> Obj:
        """The new resource: a generated name, the job (and task) labels, the spec."""
        spec: Obj = {"jobName": job_id}
        if self.reason:
            spec["reason"] = self.reason
        if user:
            spec["requestedBy"] = user
        if self.force:
            spec["force"] = True
        if self.grace_period is not None:
            spec["gracePeriodSeconds"] = self.grace_period
        if self.dry_run:
            spec["dryRun"] = True
        if self.ttl is not None:
            spec["ttlSecondsAfterFinished"] = self.ttl
        if self.drain is not None:
            spec["mode"], spec["drainDeadlineSeconds"] = "Drain", self.drain
        if self.cooperative is not None:
            spec["cooperativeSeconds"] = self.cooperative
        if self.keep_logs is not None:
            spec["preserveLogs"] = self.keep_logs
        if task_id:
            spec["taskId"] = task_id
            spec["cascade"] = cascade
        return {"apiVersion": API_VERSION, "kind": kind,
                "metadata": {"name": generate_name(job_id, task_id), "labels": cancellation_labels(job_id, task_id)},
                "spec": spec}


def submit(conn: Conn, ns: str, ask: Ask, kind: str, job_id: str, task_id: str | None = None, *,
           cascade: bool = True, user: str | None = None) -> tuple[Obj, bool]:
    """Create the cancellation; with --force, escalate instead the job's (task's) graceful one
    still running, if there is one (True: escalated)."""
    running = running_graceful(conn, ns, kind, job_id, task_id) if ask.force and not ask.dry_run else None
    escalated = conn.escalate(running, user) if running is not None else None
    if escalated is not None:
        return escalated, True
    return conn.create(PLURAL[kind], ns, ask.body(kind, job_id, task_id, cascade=cascade, user=user)), False
