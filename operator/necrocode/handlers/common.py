"""What both kinds' handlers share: the daemon body, the escalation by spec.force, the filters,
the TTL clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import kopf

from necrocode.handlers.lifecycle import service
from necrocode.kube import ApiError, NotLeader, nc_path
from necrocode.logs import log
from necrocode.model import FINALIZER, GROUP, PLURAL, TERMINAL_PHASES, VERSION, now_utc, parse_time

TTL_CAP_SECONDS = 100 * 365 * 86400
"""A longer TTL is this one (about a century): dates that far out cannot be computed."""
TTL_RETRY_SECONDS = 60.0
"""A TTL deletion the API server refused (after the client's own retries) is tried again this much later."""
_expiries: dict[str, tuple[datetime, asyncio.Task[None]]] = {}
"""The pending TTL deletion of each finished record this process serves: uid -> (when, task)."""


def not_finished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in {p.value for p in TERMINAL_PHASES}


def finished(status: kopf.Status, **_: Any) -> bool:
    return not not_finished(status)


def ttl_of(spec: Mapping[str, Any]) -> tuple[int | None, bool]:
    """The record's TTL after it finished: its own spec.ttlSecondsAfterFinished, else the
    operator's default (NECROCODE_DEFAULT_TTL_SECONDS; None: kept), and whether it is the default."""
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None:
        return int(ttl), False
    default = service().settings.default_ttl_seconds
    return default, default is not None


def spec_unobserved(meta: kopf.Meta, status: kopf.Status, **_: Any) -> bool:
    """The spec changed since the status was written (spec.force turned on: an escalation)."""
    seen = status.get("observedGeneration")
    return isinstance(seen, int) and int(meta.get("generation") or 0) > seen


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": body.get("apiVersion"), "kind": body["kind"], "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


async def _run(body: kopf.Body) -> Any:
    # the daemon's body is kopf's live view: read when the run begins (and registers itself, with
    # no await in between), so a change of spec.force is either in it or reaches the run itself
    return await service().run(_plain(body))


async def observe_spec(body: kopf.Body) -> None:
    await service().observe_spec(_plain(body))


async def run_cancellation(body: kopf.Body, stopped: kopf.DaemonStopped) -> None:
    """Run the cancellation to its end. kopf stops this daemon on operator shutdown (and on
    resource deletion); the next start of the operator resumes from the stored status."""
    task = asyncio.create_task(_run(body))
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


async def schedule_expiry(event: kopf.RawEvent, body: kopf.Body) -> None:
    """On each watch event of a finished record: arrange its deletion for when its TTL has
    passed, with a timer of this process (replaced when the TTL or completedAt changes, dropped
    when the record goes, all cancelled on stop; the next leader arranges them again from its
    first listing). Not a kopf timer: kopf keeps its finalizer on every object a timer of it
    watches, so each finished record would hold one until it expired, and an operator that is
    gone (uninstalled, scaled to 0) would leave them undeletable."""
    meta = body["metadata"]
    uid = str(meta.get("uid") or "")
    current = _expiries.get(uid)
    if event.get("type") == "DELETED":
        if current is not None and current[0] > now_utc():  # still waiting; one at work finishes (and logs)
            current[1].cancel()
            _expiries.pop(uid, None)
        return
    ttl, default = ttl_of(body.get("spec") or {})
    done = parse_time((body.get("status") or {}).get("completedAt"))
    if ttl is None or done is None or meta.get("deletionTimestamp"):
        return
    # completedAt has whole seconds: count from the end of that second, never early
    due = done + timedelta(seconds=min(ttl, TTL_CAP_SECONDS) + 1)
    if current is not None:
        if current[0] == due and not current[1].done():
            return
        if current[0] > now_utc():  # still waiting: replaced (one already deleting is left to finish)
            current[1].cancel()
    task = asyncio.create_task(_expire_when_due(uid, _plain(body), due, ttl, default),
                               name=f"ttl {meta.get('namespace')}/{meta.get('name')}")
    _expiries[uid] = (due, task)


for _plural in PLURAL.values():  # both kinds: the same clean-up
    @kopf.on.event(GROUP, VERSION, _plural, when=finished, id=f"{_plural}_ttl")
    async def cancellation_ttl(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        await schedule_expiry(event, body)


@kopf.on.cleanup()
async def forget_expiries(**_: Any) -> None:
    """The operator stops: its pending TTL deletions go with it (the next leader arranges them)."""
    for _due, task in _expiries.values():
        task.cancel()
    _expiries.clear()


async def _expire_when_due(uid: str, body: dict[str, Any], due: datetime, ttl: int, default: bool) -> None:
    try:
        left = (due - now_utc()).total_seconds()
        if left > 0:
            await asyncio.sleep(left)
        while True:
            try:
                await expire(body, ttl, default)
                return
            except NotLeader:
                return  # the next leader deletes it
            except ApiError as exc:
                log("cancellation record not deleted after its TTL; trying again", logging.WARNING,
                    cancellation=body["metadata"].get("name"), kind=body.get("kind"),
                    namespace=body["metadata"].get("namespace"), error=str(exc), again_in=TTL_RETRY_SECONDS)
                await asyncio.sleep(TTL_RETRY_SECONDS)
    finally:
        current = _expiries.get(uid)
        if current is not None and current[1] is asyncio.current_task():
            _expiries.pop(uid, None)


async def expire(body: Mapping[str, Any], ttl: int, default: bool = False) -> None:
    """Delete a finished record whose TTL has passed (its uid as a precondition: never a newer
    record of the same name)."""
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
        namespace=meta["namespace"], ttl_seconds=ttl, default_ttl=default)


async def _wait(stopped: kopf.DaemonStopped) -> None:
    await stopped.wait()
