"""What both kinds' handlers share: the daemon body, the filters, the TTL clean-up."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import kopf

from necrocode.handlers.lifecycle import service
from necrocode.kube import ApiError, nc_path
from necrocode.logs import log
from necrocode.model import FINALIZER, PLURAL, TERMINAL_PHASES, now_utc, parse_time


def not_finished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in {p.value for p in TERMINAL_PHASES}


def ttl_set_and_finished(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return spec.get("ttlSecondsAfterFinished") is not None and not not_finished(status)


async def run_cancellation(body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    """Run the cancellation to its end. kopf stops this daemon on operator shutdown (and on
    resource deletion); the next start of the operator resumes from the stored status."""
    obj = {"apiVersion": body.get("apiVersion"), "kind": body["kind"], "metadata": dict(body["metadata"]),
           "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}
    task = asyncio.create_task(service().run(obj))
    stop = asyncio.create_task(_wait(stopped))
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        stop.cancel()
        return
    stop.cancel()
    task.result()


async def expire(body: kopf.Body, spec: kopf.Spec, status: kopf.Status) -> None:
    done = parse_time(status.get("completedAt"))
    ttl = spec.get("ttlSecondsAfterFinished")
    if done is None or ttl is None:
        return
    left = (done + timedelta(seconds=int(ttl)) - now_utc()).total_seconds()
    if left > 0:
        raise kopf.TemporaryError(f"record expires in {left:.0f}s", delay=max(1.0, left))
    meta = body["metadata"]
    kube = service().kube
    path = nc_path(meta["namespace"], PLURAL[body["kind"]], meta["name"])
    left_over = await kube.delete(path, uid=meta.get("uid"), propagation=None)
    # A finished record has nothing left for kopf to do, but kopf's finalizer keeps it until kopf
    # has processed the deletion, which can lag (seen once in CI: over 30 s): let it go now.
    fins = ((left_over or {}).get("metadata") or {}).get("finalizers") or []
    if FINALIZER in fins:
        rv = (left_over or {}).get("metadata", {}).get("resourceVersion")
        with contextlib.suppress(ApiError):  # changed meanwhile, or gone: kopf finishes it
            await kube.json_patch(path, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                                         {"op": "replace", "path": "/metadata/finalizers",
                                          "value": [f for f in fins if f != FINALIZER]}])
    log("cancellation record deleted after its TTL", cancellation=meta["name"], kind=body["kind"],
        namespace=meta["namespace"], ttl_seconds=ttl)


async def _wait(stopped: kopf.DaemonStopped) -> None:
    await stopped.wait()
