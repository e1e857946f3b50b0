"""TTL after finish (spec.ttlSecondsAfterFinished, else the operator's default): a finished
record is deleted when its TTL has passed, for both kinds.

Timers of this process, not kopf timers: kopf keeps its finalizer on every object a timer of it
watches, so each finished record would hold one until it expired, and an operator that is gone
(uninstalled, scaled to 0) would leave them undeletable. The pending deletions live in
`memo.expiries` (uid -> (when, task)); they are replaced when the TTL or completedAt changes,
dropped when the record goes, and all cancelled on stop: the next leader arranges them again
from its first listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import kopf

from necrocode.handlers.common import finished
from necrocode.handlers.lifecycle import service_of
from necrocode.kube import ApiError, Kube, NotLeader, nc_path
from necrocode.logs import log
from necrocode.model import FINALIZER, GROUP, PLURAL, VERSION, now_utc, parse_time

TTL_CAP_SECONDS = 100 * 365 * 86400
"""A longer TTL is this one (about a century): dates that far out cannot be computed."""
TTL_RETRY_SECONDS = 60.0
"""A TTL deletion the API server refused (after the client's own retries) is tried again this much later."""
Expiries = dict[str, tuple[datetime, "asyncio.Task[None]"]]


def ttl_of(spec: Mapping[str, Any], default: int | None) -> tuple[int | None, bool]:
    """The record's TTL after it finished: its own spec.ttlSecondsAfterFinished, else the
    operator's default (NECROCODE_DEFAULT_TTL_SECONDS; None: kept), and whether it is the default."""
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None:
        return int(ttl), False
    return default, default is not None


def due_of(completed_at: datetime, ttl: int) -> datetime:
    """When a record finished at `completed_at` expires. completedAt has whole seconds: count
    from the end of that second, never early."""
    return completed_at + timedelta(seconds=min(ttl, TTL_CAP_SECONDS) + 1)


for _plural in PLURAL.values():  # both kinds: the same clean-up
    @kopf.on.event(GROUP, VERSION, _plural, when=finished, id=f"{_plural}_ttl")
    async def cancellation_ttl(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        schedule_expiry(memo, event, body)


@kopf.on.cleanup()
async def forget_expiries(memo: kopf.Memo, **_: Any) -> None:
    """The operator stops: its pending TTL deletions go with it (the next leader arranges them)."""
    expiries: Expiries = memo.expiries
    for _due, task in expiries.values():
        task.cancel()
    expiries.clear()


def schedule_expiry(memo: kopf.Memo, event: kopf.RawEvent, body: kopf.Body) -> None:
    """On each watch event of a finished record: arrange its deletion for when its TTL has passed."""
    expiries: Expiries = memo.expiries
    meta = body["metadata"]
    uid = str(meta.get("uid") or "")
    current = expiries.get(uid)
    if event.get("type") == "DELETED":
        if current is not None and current[0] > now_utc():  # still waiting; one at work finishes (and logs)
            current[1].cancel()
            expiries.pop(uid, None)
        return
    service = service_of(memo)
    ttl, default = ttl_of(body.get("spec") or {}, service.settings.default_ttl_seconds)
    done = parse_time((body.get("status") or {}).get("completedAt"))
    if ttl is None or done is None or meta.get("deletionTimestamp"):
        return
    due = due_of(done, ttl)
    if current is not None:
        if current[0] == due and not current[1].done():
            return
        if current[0] > now_utc():  # still waiting: replaced (one already deleting is left to finish)
            current[1].cancel()
    # what the deletion needs, no more: a pending deletion lives as long as the TTL (7 days by
    # default), one per finished record, and the whole metadata (managedFields, kopf's
    # last-handled-configuration) would be kilobytes each
    plain = {"kind": body["kind"], "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}}
    # in a context of its own: a task copies the current one, and kopf's holds this event's cause
    # (the record's whole body, its patch, its logger), which would live as long as the TTL does:
    # ~19 KiB of live heap per finished record for 7 days (docs/benchmarks.md "Session 10")
    task = asyncio.create_task(_expire_when_due(service.kube, expiries, uid, plain, due, ttl, default),
                               name=f"ttl {meta.get('namespace')}/{meta.get('name')}", context=contextvars.Context())
    expiries[uid] = (due, task)


async def _expire_when_due(kube: Kube, expiries: Expiries, uid: str, body: dict[str, Any], due: datetime,
                           ttl: int, default: bool) -> None:
    try:
        left = (due - now_utc()).total_seconds()
        if left > 0:
            await asyncio.sleep(left)
        while True:
            try:
                await expire(kube, body, ttl, default)
                return
            except NotLeader:
                return  # the next leader deletes it
            except ApiError as exc:
                log("cancellation record not deleted after its TTL; trying again", logging.WARNING,
                    cancellation=body["metadata"].get("name"), kind=body.get("kind"),
                    namespace=body["metadata"].get("namespace"), error=str(exc), again_in=TTL_RETRY_SECONDS)
                await asyncio.sleep(TTL_RETRY_SECONDS)
    finally:
        current = expiries.get(uid)
        if current is not None and current[1] is asyncio.current_task():
            expiries.pop(uid, None)


async def expire(kube: Kube, body: Mapping[str, Any], ttl: int, default: bool = False) -> None:
    """Delete a finished record whose TTL has passed (its uid as a precondition: never a newer
    record of the same name)."""
    meta = body["metadata"]
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
