"""ResourceCleaner: release a job's repo slots (Leases), delete its scratch resources, keep (or,
when asked, delete) its artifacts; each failed operation retried with exponential backoff, and
a report of what was released, deleted, kept and what failed (seed 4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from necrocode import metrics
from necrocode.clock import Clock
from necrocode.concurrency import bounded
from necrocode.kube import ApiError, Conflict, Kube, NotFound, core_path, lease_path
from necrocode.logs import Bound
from necrocode.model import LABEL_ARTIFACT, LABEL_JOB, LABEL_REPO_POOL, LABEL_SCRATCH, LABEL_SLOT_STATE, LABEL_TASK
from necrocode.planning import RetryPolicy

T = TypeVar("T")
Obj = dict[str, Any]

# kind -> (plural, resource label for metrics); Secrets only when the setting adds them
DELETABLE_KINDS = {"ConfigMap": "configmaps", "PersistentVolumeClaim": "persistentvolumeclaims"}


@dataclass
class Attempted:
    ok: bool
    attempts: int
    error: str = ""


async def retrying(op: Callable[[], Awaitable[T]], policy: RetryPolicy, clock: Clock) -> Attempted:
    """Run op until it succeeds or the policy's attempts are used; NotFound counts as success."""
    delays = policy.delays()
    last = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            await op()
            return Attempted(True, attempt)
        except NotFound:
            return Attempted(True, attempt)
        except ApiError as exc:
            last = exc.message or str(exc)
            if attempt <= len(delays):
                await clock.sleep(delays[attempt - 1])
    return Attempted(False, policy.attempts, last)


@dataclass
class CleanupOutcome:
    released: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    preserved: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (object, message, attempts)


class ResourceCleaner:
    def __init__(self, kube: Kube, namespace: str, *, policy: RetryPolicy, clock: Clock, log: Bound,
                 concurrency: int, include_secrets: bool):
        self.kube, self.namespace, self.policy, self.clock, self.log = kube, namespace, policy, clock, log
        self.concurrency = concurrency
        self.kinds = dict(DELETABLE_KINDS)
        if include_secrets:
            self.kinds["Secret"] = "secrets"

    # ------------------------------------------------------------------ discovery
    async def held_leases(self, selector: str, only: frozenset[str] | None = None) -> list[Obj]:
        """Leases of the pool that carry the job's labels (and, given `only`, one of those tasks)."""
        items, _ = await self.kube.list_all(lease_path(self.namespace), label_selector=f"{selector},{LABEL_REPO_POOL}")
        return [o for o in items if _in_tasks(o, only)]

    async def labelled(self, selector: str, marker: str, only: frozenset[str] | None = None) -> list[tuple[str, Obj]]:
        out: list[tuple[str, Obj]] = []
        for kind, plural in self.kinds.items():
            items, _ = await self.kube.list_all(core_path(self.namespace, plural),  # names: metadata is enough
                                                label_selector=f"{selector},{marker}=true", meta_only=True)
            out += [(kind, o) for o in items if _in_tasks(o, only)]
        return out

    # ------------------------------------------------------------------ actions
    async def release_leases(self, selector: str, out: CleanupOutcome, only: frozenset[str] | None = None) -> None:
        """Clear the holder, drop the job and task labels, mark the slot dirty for the pool."""
        async def release(lease: Obj) -> None:
            name = lease["metadata"]["name"]
            current = lease

            async def put() -> None:
                nonlocal current
                try:
                    await self.kube.request("PUT", lease_path(self.namespace, name), body=released(current),
                                            meta_only=True)
                except Conflict:  # changed since we read it (a renewal): read again, release that
                    current = await self.kube.get(lease_path(self.namespace, name))
                    if not _held_for(current, selector):
                        return  # released meanwhile (by the pool, or an earlier try of ours)
                    raise

            res = await retrying(put, self.policy, self.clock)
            self._record(out.released, f"lease/{name}", "lease", res, out, "released")

        await bounded(await self.held_leases(selector, only), release, self.concurrency)

    async def delete_labelled(self, selector: str, marker: str, out: CleanupOutcome,
                              only: frozenset[str] | None = None) -> None:
        async def delete(item: tuple[str, Obj]) -> None:
            kind, obj = item
            name = obj["metadata"]["name"]
            path = core_path(self.namespace, self.kinds[kind], name)
            res = await retrying(lambda: self.kube.delete(path, uid=obj["metadata"].get("uid"), meta_only=True),
                                 self.policy, self.clock)
            self._record(out.deleted, f"{kind.lower()}/{name}", kind.lower(), res, out, "deleted")

        await bounded(await self.labelled(selector, marker, only), delete, self.concurrency)

    async def cleanup(self, selector: str, preserve_artifacts: bool,
                      only: frozenset[str] | None = None) -> CleanupOutcome:
        """Release leases, delete scratch, keep artifacts; `only` limits it to those tasks."""
        out = CleanupOutcome()
        await self.release_leases(selector, out, only)
        await self.delete_labelled(selector, LABEL_SCRATCH, out, only)
        if preserve_artifacts:
            for kind, obj in await self.labelled(selector, LABEL_ARTIFACT, only):
                out.preserved.append(f"{kind.lower()}/{obj['metadata']['name']}")
            self.log.info("artifacts preserved", count=len(out.preserved))
        else:
            await self.delete_labelled(selector, LABEL_ARTIFACT, out, only)
        return out

    def _record(self, bucket: list[str], obj: str, resource: str, res: Attempted, out: CleanupOutcome,
                verb: str) -> None:
        if res.ok:
            bucket.append(obj)
            self.log.info(f"cleanup {verb}", object=obj, attempts=res.attempts)
        else:
            out.failed.append((obj, res.error, res.attempts))
            metrics.CLEANUP_FAILURES.labels(resource=resource).inc()
            self.log.error("cleanup failed", object=obj, attempts=res.attempts, error=res.error)


def released(lease: Obj) -> Obj:
    """The Lease as read, released: no holder, no job or task label, the slot marked dirty so the
    pool cleans it before reuse. The body of a PUT guarded by the resourceVersion it was read at
    (cheaper for the API server than a patch it has to apply)."""
    meta = {k: v for k, v in lease["metadata"].items() if k != "managedFields"}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (LABEL_JOB, LABEL_TASK)}
    labels[LABEL_SLOT_STATE] = "dirty"
    spec = {k: v for k, v in (lease.get("spec") or {}).items() if k != "holderIdentity"}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **lease, "metadata": {**meta, "labels": labels},
            "spec": spec}


def _held_for(lease: Obj, selector: str) -> bool:
    """Does the Lease still carry every label of `selector` (k=v,...) and a holder?"""
    labels = (lease.get("metadata") or {}).get("labels") or {}
    want = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
    return all(labels.get(k) == v for k, v in want.items()) and bool((lease.get("spec") or {}).get("holderIdentity"))


def _in_tasks(obj: Obj, only: frozenset[str] | None) -> bool:
    return only is None or ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_TASK) in only
