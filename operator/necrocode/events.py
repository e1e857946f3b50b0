"""Kubernetes Events on the cancellation, the AgentJob and its AgentTasks.

Event names are derived from (cancellation uid, key), so an event written before an operator
restart or by another replica is not written twice: the second create answers 409.

Events are written in the background (a few at a time), off the cancellation's critical path:
`emit` returns at once, `drain` waits until every event emitted so far is written. The engine
drains before it writes the final phase, so whoever sees the final phase also sees the events.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from necrocode.clock import Clock
from necrocode.kube import AlreadyExists, ApiError, Kube, core_path
from necrocode.logs import Bound
from necrocode.model import iso

COMPONENT = "necrocode-cancel"


class EventRecorder:
    def __init__(self, kube: Kube, clock: Clock, origin_uid: str, log: Bound, concurrency: int = 10):
        self.kube, self.clock, self.origin_uid, self.log = kube, clock, origin_uid, log
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._pending: set[asyncio.Task[None]] = set()

    async def emit(self, involved: Mapping[str, Any], key: str, reason: str, message: str,
                   type_: str = "Normal") -> None:
        """Queue the event; it is written in the background (see `drain`)."""
        task = asyncio.create_task(self._bounded(dict(involved), key, reason, message, type_))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

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
