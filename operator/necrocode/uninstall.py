"""Before the operator is removed: stop it, then take kopf's finalizer (model.FINALIZER) off the
cancellation records it served. kopf keeps that finalizer on a record while a cancellation of it
runs; with no operator left to let it go, deleting that record, or its namespace, would wait for
ever.

    necrocode-operator --release-finalizers [--deployment NAMESPACE/NAME] [--namespace NS ...]

The chart runs this as a Helm pre-delete hook, with the operator's own ServiceAccount: hooks run
before Helm deletes anything, so that identity and its RBAC still work (the operator cannot do it
on its own SIGTERM: by the time its pod is told to stop, `helm uninstall` has already deleted its
ServiceAccount and RoleBindings). With --deployment it first scales the operator's Deployment to
0 and waits until none of its pods is left: a pod is removed only after its process has exited,
and an operator that has stopped puts no finalizer back. Then it releases the finalizers, in the
served namespaces (all when none is named), and exits 0 (1 if some could not be released).
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from typing import Any

from necrocode.kube import ApiError, Conflict, Kube, NotFound, nc_path
from necrocode.logs import log
from necrocode.model import FINALIZER, PLURAL

Obj = dict[str, Any]


def _scale_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"


async def stop_deployment(kube: Kube, namespace: str, name: str, *, wait_seconds: float = 90.0,
                          poll: float = 1.0) -> bool:
    """Scale the Deployment to 0 and wait until none of its pods is left (True), or `wait_seconds`
    passed (False). A missing Deployment is stopped already."""
    try:
        scale = await kube.merge_patch(_scale_path(namespace, name), {"spec": {"replicas": 0}})
    except NotFound:
        log("operator Deployment not found; nothing to stop", deployment=f"{namespace}/{name}")
        return True
    selector = str((scale.get("status") or {}).get("selector") or "")
    if not selector:  # never empty for a Deployment; do not wait on every pod of the namespace
        return True
    log("operator Deployment scaled to 0; waiting for its pods to go", deployment=f"{namespace}/{name}",
        selector=selector)
    deadline = time.monotonic() + wait_seconds
    while True:
        pods, _ = await kube.list_all(f"/api/v1/namespaces/{namespace}/pods", label_selector=selector,
                                      meta_only=True)
        if not pods:
            return True
        if time.monotonic() >= deadline:
            log("operator pods still there; releasing the finalizers anyway", deployment=f"{namespace}/{name}",
                pods=sorted(str((p.get("metadata") or {}).get("name")) for p in pods))
            return False
        await asyncio.sleep(poll)


async def _release_one(kube: Kube, path: str, meta: Obj) -> bool:
    """Remove FINALIZER from one record (its other finalizers stay); False if it had none, or is gone."""
    async def round_() -> bool:
        nonlocal meta
        fins = [str(f) for f in meta.get("finalizers") or []]
        if FINALIZER not in fins:
            return False
        try:
            await kube.merge_patch(path, {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                                       "finalizers": [f for f in fins if f != FINALIZER]}},
                                   meta_only=True)
        except Conflict:  # changed since we read it: read it again
            meta = (await kube.request("GET", path, meta_only=True)).get("metadata") or {}
            raise
        return True

    try:
        return await kube.conflict_retry(round_)
    except NotFound:
        return False


async def release_finalizers(kube: Kube, namespaces: list[str], *, concurrency: int = 20) -> tuple[int, int]:
    """Take FINALIZER off every cancellation record in `namespaces` (names or glob patterns, like
    --namespace; empty: all). Returns (released, failed)."""
    patterns = [n for n in namespaces if any(c in n for c in "*?[")]
    targets: list[tuple[str, Obj]] = []
    for plural in PLURAL.values():
        for ns in [None] if patterns or not namespaces else namespaces:
            items, _ = await kube.list_all(nc_path(ns, plural), meta_only=True)
            for item in items:
                meta = item.get("metadata") or {}
                if patterns and not any(fnmatch.fnmatchcase(str(meta.get("namespace")), n) for n in namespaces):
                    continue
                if FINALIZER in (meta.get("finalizers") or []):
                    targets.append((nc_path(str(meta.get("namespace")), plural, str(meta.get("name"))), meta))
    gate = asyncio.Semaphore(concurrency)
    failed: list[str] = []

    async def one(path: str, meta: Obj) -> bool:
        async with gate:
            try:
                return await _release_one(kube, path, meta)
            except ApiError as exc:
                failed.append(f"{meta.get('namespace')}/{meta.get('name')}: {exc}")
                return False

    released = sum(await asyncio.gather(*(one(p, m) for p, m in targets)))
    log("operator finalizers released", released=released, failed=len(failed), errors=failed[:20] or None,
        namespaces=namespaces or "all")
    return released, len(failed)


async def run(kube: Kube, namespaces: list[str], deployment: str = "", wait_seconds: float = 90.0) -> int:
    """The --release-finalizers mode: exit code 0 when every finalizer was released, else 1."""
    try:
        if deployment:
            namespace, _, name = deployment.rpartition("/")
            await stop_deployment(kube, namespace or "default", name, wait_seconds=wait_seconds)
        _, failed = await release_finalizers(kube, namespaces)
        return 1 if failed else 0
    except ApiError as exc:
        log("finalizers not released", error=str(exc))
        return 1
    finally:
        await kube.close()
