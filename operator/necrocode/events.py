"""Kubernetes Events on the cancellation, the AgentJob and its AgentTasks.

Event names are derived from (cancellation uid, key), so an event written before an operator
restart or by another replica is not written twice: the second create answers 409.

Events are written in the background (a few at a time), off the cancellation's critical path:
`emit` returns at once, `drain` waits until every event emitted so far is written. The engine
drains before it writes the final phase, so whoever sees the final phase also sees the events.

Detail Events (one per task, one per forced runner) also pass the operator's Event budget
(`DetailEvents`, one per process): when it has no token the Event is not written, and the
caller counts it in its summary instead. A cancellation's own Events (started, cancelling,
cancelled, the summaries, failures) are a few per cancellation and always go.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from necrocode import metrics
from necrocode.clock import Clock
from necrocode.kube import AlreadyExists, ApiError, Kube, core_path
from necrocode.logs import Bound
from necrocode.model import iso
from necrocode.policies.budget import full, try_take

COMPONENT = "necrocode-cancel"


class DetailEvents:
    """The operator's budget for detail Events: `qps` a second with bursts of `burst`, all
    cancellations together (qps 0: no limit). Why drop rather than wait: an Event written a
    minute late says nothing the task's status does not, and waiting would hold a cancellation
    (or pile up pending writes) for what is only a courtesy to `kubectl describe`."""

    def __init__(self, qps: float, burst: int, clock: Clock):
        self.clock = clock
        self._bucket = full(qps, burst, clock.monotonic())

    def admit(self) -> bool:
        """A token now (the Event may be written), or False (it is counted as skipped)."""
        self._bucket, ok = try_take(self._bucket, self.clock.monotonic())
        if not ok:
            metrics.EVENTS_SKIPPED.inc()
        return ok


class EventRecorder:
    def __init__(self, kube: Kube, clock: Clock, origin_uid: str, log: Bound, concurrency: int = 10,
                 details: DetailEvents | None = None):
        self.kube, self.clock, self.origin_uid, self.log = kube, clock, origin_uid, log
        self.details = details
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._pending: set[asyncio.Task[None]] = set()

    async def emit(self, involved: Mapping[str, Any], key: str, reason: str, message: str,
                   type_: str = "Normal", detail: bool = False) -> bool:
        """Queue the event; it is written in the background (see `drain`). A `detail` event
        (per task, per runner) goes only when the Event budget has a token: False when it
        does not (nothing is queued, and the caller's summary counts it)."""
        if detail and self.details is not None and not self.details.admit():
            return False
        task = asyncio.create_task(self._bounded(dict(involved), key, reason, message, type_))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def drain(self) -> None:
        """Wait until every event emitted so far has been written (or given up on)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _bounded(self, involved: Mapping[str, Any], key: str, reason: str, message: str, type_: str) -> None:
        async with self._sem:
            await self.write(involved, key, reason, message, type_)

    async def write(self, involved: Mapping[str, Any], key: str, reason: str, message: str,
                    type_: str = "Normal") -> None:
        meta = involved.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        digest = hashlib.sha256(f"{self.origin_uid}/{meta.get('uid')}/{key}".encode()).hexdigest()[:20]
        name = f"{meta.get('name', 'object')[:200]}.{digest}"
        now = iso(self.clock.now())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": meta.get("name"), "namespace": ns, "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.kube.create(core_path(ns, "events"), body)
        except AlreadyExists:
            pass
        except ApiError as exc:  # events are best effort: never fail a cancellation for one
            self.log.warning("event not recorded", reason=reason, error=str(exc))
