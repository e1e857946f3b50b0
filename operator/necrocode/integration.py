"""Integration points for NecroCode's own dispatcher and runner monitor (seed 6, 8).

The dispatcher should call `is_job_cancelled` before it assigns a task (the admission policy
refuses runner pods of a blocked job anyway, but checking first avoids a refused create), and
can follow `cancellation_events` to drop a job's queued work as soon as a cancellation starts.

    from necrocode.integration import CancellationClient
    client = CancellationClient.from_kubeconfig()
    if await client.is_job_cancelled("ns", "job1"): ...
    async for ev in client.cancellation_events("ns"):
        print(ev.kind, ev.name, ev.job, ev.phase)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from necrocode.kube import Gone, Kube, NotFound, core_path, load_credentials, nc_path
from necrocode.model import (
    BLOCKED_DISPATCH,
    LABEL_JOB,
    LABEL_ROLE,
    PLURAL,
    ROLE_RUNNER,
    TERMINAL_PHASES,
    JobPhase,
)


@dataclass(frozen=True)
class CancellationEvent:
    kind: str
    name: str
    namespace: str
    job: str
    task: str | None
    phase: str
    type: str  # ADDED | MODIFIED | DELETED


@dataclass(frozen=True)
class RunnerState:
    """A runner pod as the monitor sees it during a cancellation."""

    name: str
    task: str | None
    phase: str
    terminating: bool
    cancel_requested: bool


class CancellationClient:
    def __init__(self, kube: Kube):
        self.kube = kube

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> CancellationClient:
        return cls(Kube(load_credentials(kubeconfig, context)))

    async def close(self) -> None:
        await self.kube.close()

    # ---- dispatcher (seed 6.1)
    async def is_job_cancelled(self, namespace: str, job: str) -> bool:
        """True when the job is blocked for dispatch or already Cancelling/Cancelled."""
        try:
            obj = await self.kube.get(nc_path(namespace, "agentjobs", job))
        except NotFound:
            return False
        blocked = bool(((obj.get("spec") or {}).get("dispatch") or {}).get("blocked"))
        phase = (obj.get("status") or {}).get("phase")
        return blocked or phase in (JobPhase.CANCELLING.value, JobPhase.CANCELLED.value)

    async def block_job_assignment(self, namespace: str, job: str) -> None:
        """Stop dispatch for a job without cancelling it (what BlockDispatch does first)."""
        await self.kube.merge_patch(nc_path(namespace, "agentjobs", job), BLOCKED_DISPATCH)

    # ---- monitor (seed 8)
    async def get_job_runners(self, namespace: str, job: str) -> list[RunnerState]:
        items, _ = await self.kube.list_all(core_path(namespace, "pods"),
                                            label_selector=f"{LABEL_JOB}={job},{LABEL_ROLE}={ROLE_RUNNER}")
        return [_runner(p) for p in items]

    async def cancellation_events(self, namespace: str, kind: str = "JobCancellation") -> AsyncIterator[CancellationEvent]:
        """Follow cancellations in a namespace (seed 6.2): one event per change, forever."""
        path = nc_path(namespace, PLURAL[kind])
        _, rv = await self.kube.list_all(path)
        while True:
            try:
                async for ev in self.kube.watch(path, resource_version=rv):
                    obj: dict[str, Any] = ev.get("object") or {}
                    meta = obj.get("metadata") or {}
                    rv = meta.get("resourceVersion", rv)
                    if ev.get("type") == "BOOKMARK":
                        continue
                    spec = obj.get("spec") or {}
                    yield CancellationEvent(kind=kind, name=meta.get("name", ""), namespace=namespace,
                                            job=spec.get("jobName", ""), task=spec.get("taskId"),
                                            phase=(obj.get("status") or {}).get("phase", "Pending"),
                                            type=str(ev.get("type")))
            except Gone:
                _, rv = await self.kube.list_all(path)


def is_finished(phase: str) -> bool:
    return phase in {p.value for p in TERMINAL_PHASES}


def _runner(pod: dict[str, Any]) -> RunnerState:
    meta = pod.get("metadata") or {}
    return RunnerState(
        name=meta.get("name", ""), task=(meta.get("labels") or {}).get("necrocode.io/task"),
        phase=(pod.get("status") or {}).get("phase", "Unknown"),
        terminating=bool(meta.get("deletionTimestamp")),
        cancel_requested="necrocode.io/cancel-requested" in (meta.get("annotations") or {}),
    )
