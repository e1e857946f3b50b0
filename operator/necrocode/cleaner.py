"""ResourceCleaner: release a job's repo slots (Leases), delete its scratch resources, keep (or,
when asked and the requester may, delete) its artifacts; each failed operation retried with
exponential backoff, and a report of what was released, deleted, kept and what failed (seed 4).
Only the objects of the job instance acted on are touched (planning.belongs_to).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from necrocode import metrics
from necrocode.concurrency import bounded, together
from necrocode.kube import ApiError, Kube, NotFound, TransientError, core_path, lease_path
from necrocode.logs import Bound
from necrocode.logtail import is_kept_log
from necrocode.model import (
    LABEL_ARTIFACT,
    LABEL_JOB,
    LABEL_RELEASED_BY,
    LABEL_REPO_POOL,
    LABEL_SCRATCH,
    LABEL_SLOT_STATE,
    LABEL_TASK,
)
from necrocode.planning import JobInstance, belongs_to

T = TypeVar("T")
Obj = dict[str, Any]

# kind -> (plural, resource label for metrics); Secrets only when the setting adds them
DELETABLE_KINDS = {"ConfigMap": "configmaps", "PersistentVolumeClaim": "persistentvolumeclaims"}


@dataclass
class Attempted:
    ok: bool
    attempts: int
    error: str = ""
    transient: bool = False


async def attempt(op: Callable[[], Awaitable[T]]) -> Attempted:
    """Run op once (Kube.request already retried what is worth retrying, with the one retry
    policy); NotFound counts as done. The answer and the attempts it took are the report."""
    try:
        await op()
    except NotFound:
        return Attempted(True, 1)
    except ApiError as exc:
        return Attempted(False, exc.attempts, exc.message or str(exc), isinstance(exc, TransientError))
    return Attempted(True, 1)


@dataclass
class CleanupOutcome:
    released: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    preserved: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (object, message, attempts)
    transient: bool = False
    """Some failure was a fault of the API, not an answer (the step is worth running again)."""


class ResourceCleaner:
    def __init__(self, kube: Kube, namespace: str, *, log: Bound, concurrency: int, include_secrets: bool):
        self.kube, self.namespace, self.log = kube, namespace, log
        self.concurrency = concurrency
        self.kinds = dict(DELETABLE_KINDS)
        if include_secrets:
            self.kinds["Secret"] = "secrets"

    # ------------------------------------------------------------------ discovery
    async def held_leases(self, selector: str, only: frozenset[str] | None = None, *,
                          job: JobInstance | None = None) -> list[Obj]:
        """Leases of the pool that carry the job's labels (and, given `only`, one of those tasks).
        A slot is a pool object older than any job: only a job-uid label can say it is another's."""
        items, _ = await self.kube.list_all(lease_path(self.namespace), label_selector=f"{selector},{LABEL_REPO_POOL}")
        return [o for o in items if _in_tasks(o, only) and belongs_to(o, job)]

    async def marked(self, selector: str, only: frozenset[str] | None = None, *,
                     job: JobInstance | None = None) -> tuple[list[tuple[str, Obj]], list[tuple[str, Obj]]]:
        """The job's scratch objects and its artifacts (`necrocode.io/scratch` or `artifact`
        "true"), from one list of each kind's metadata (a list per marker was two: a
        cancellation of 5 runners made ~60 requests, two of them these). Artifacts older than
        the job are another job's (planning.belongs_to by_time): they are never listed, so
        never deleted. An object marked both is in both lists, as each marker says."""
        scratch: list[tuple[str, Obj]] = []
        artifacts: list[tuple[str, Obj]] = []
        kinds = list(self.kinds.items())
        listed = await together(*(  # each kind's list at once; names: metadata is enough
            self.kube.list_all(core_path(self.namespace, plural), label_selector=selector, meta_only=True)
            for _, plural in kinds))
        for (kind, _), (items, _) in zip(kinds, listed, strict=True):
            for o in items:
                labels = (o.get("metadata") or {}).get("labels") or {}
                if not _in_tasks(o, only):
                    continue
                if labels.get(LABEL_SCRATCH) == "true" and belongs_to(o, job):
                    scratch.append((kind, o))
                if labels.get(LABEL_ARTIFACT) == "true" and belongs_to(o, job, by_time=True):
                    artifacts.append((kind, o))
        return scratch, artifacts

    async def released_by(self, uid: str) -> list[Obj]:
        """The Leases this cancellation released (they carry its uid): an exact count after any restart."""
        items, _ = await self.kube.list_all(lease_path(self.namespace), label_selector=f"{LABEL_RELEASED_BY}={uid}",
                                            meta_only=True)
        return items

    # ------------------------------------------------------------------ actions
    async def release_leases(self, selector: str, out: CleanupOutcome, only: frozenset[str] | None = None, *,
                             by_uid: str, keep: Callable[[Obj], str | None] = lambda lease: None,
                             job: JobInstance | None = None) -> None:
        """Clear the holder, drop the job and task labels, mark the slot dirty for the pool and
        ours as the releaser. `keep(lease)` names a reason to keep a slot (its runner pod still
        exists: the slot must not go to another task while that runner may still write to it)."""
        async def release(lease: Obj) -> None:
            name = lease["metadata"]["name"]
            why = keep(lease)
            if why:
                out.failed.append((f"lease/{name}", f"not released: {why}", 1))
                self.log.warning("repo slot kept", lease=name, reason=why)
                return
            current: Obj | None = lease

            async def put() -> None:
                nonlocal current
                if current is None:  # a conflict: the lease changed since we read it (a renewal)
                    current = await self.kube.get(lease_path(self.namespace, name))
                    if not _held_for(current, selector):
                        return  # released meanwhile (by the pool, or an earlier try of ours)
                body, current = released(current, by_uid), None
                await self.kube.request("PUT", lease_path(self.namespace, name), body=body, meta_only=True)

            res = await attempt(lambda: self.kube.conflict_retry(put))
            self._record(out.released, f"lease/{name}", "lease", res, out, "released")

        await bounded(await self.held_leases(selector, only, job=job), release, self.concurrency)

    async def delete_all(self, doomed: list[tuple[str, Obj]], out: CleanupOutcome) -> None:
        async def delete(item: tuple[str, Obj]) -> None:
            kind, obj = item
            name = obj["metadata"]["name"]
            path = core_path(self.namespace, self.kinds[kind], name)
            res = await attempt(lambda: self.kube.delete(path, uid=obj["metadata"].get("uid"), meta_only=True))
            self._record(out.deleted, f"{kind.lower()}/{name}", kind.lower(), res, out, "deleted")

        await bounded(doomed, delete, self.concurrency)

    async def cleanup(self, selector: str, delete_artifacts: frozenset[str], only: frozenset[str] | None = None, *,
                      by_uid: str, keep: Callable[[Obj], str | None] = lambda lease: None,
                      before_delete: Callable[[int], Awaitable[None]] | None = None,
                      job: JobInstance | None = None,
                      keep_artifact: Callable[[Obj], bool] = lambda obj: False) -> CleanupOutcome:
        """Release leases, delete scratch, keep artifacts except those of the kinds in
        `delete_artifacts` (asked for, and the requester may delete them) that `keep_artifact`
        does not keep, and always the runner logs a cancellation kept (necrocode.io/kept-log);
        `only` limits it to those tasks. `before_delete(n)` is told how many resources are about
        to be deleted, before the first is."""
        out = CleanupOutcome()
        # the slots go back while the scratch and artifacts are listed: neither waits for the other
        _, (doomed, artifacts) = await together(
            self.release_leases(selector, out, only, by_uid=by_uid, keep=keep, job=job),
            self.marked(selector, only, job=job))
        for kind, obj in artifacts:
            # a kept runner log stays, whatever was asked
            if kind in delete_artifacts and not keep_artifact(obj) and not is_kept_log(obj):
                doomed.append((kind, obj))
            else:
                out.preserved.append(f"{kind.lower()}/{obj['metadata']['name']}")
        if out.preserved:
            self.log.info("artifacts preserved", count=len(out.preserved))
        if before_delete is not None:
            await before_delete(len(doomed))
        await self.delete_all(doomed, out)
        return out

    def _record(self, bucket: list[str], obj: str, resource: str, res: Attempted, out: CleanupOutcome,
                verb: str) -> None:
        if res.ok:
            bucket.append(obj)
            self.log.info(f"cleanup {verb}", object=obj, attempts=res.attempts)
        else:
            out.failed.append((obj, res.error, res.attempts))
            out.transient = out.transient or res.transient
            metrics.CLEANUP_FAILURES.labels(resource=resource).inc()
            self.log.error("cleanup failed", object=obj, attempts=res.attempts, error=res.error)


def released(lease: Obj, by_uid: str) -> Obj:
    """The Lease as read, released: no holder, no job or task label, the slot marked dirty so the
    pool cleans it before reuse, and the releasing cancellation's uid on it. The body of a PUT
    guarded by the resourceVersion it was read at
    (cheaper for the API server than a patch it has to apply)."""
    meta = {k: v for k, v in lease["metadata"].items() if k != "managedFields"}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (LABEL_JOB, LABEL_TASK)}
    labels[LABEL_SLOT_STATE] = "dirty"
    if by_uid:
        labels[LABEL_RELEASED_BY] = by_uid
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
