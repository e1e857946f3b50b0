"""Kubernetes Events on the cancellation, the AgentJob and its AgentTasks.

Event names are derived from (cancellation uid, key), so an event written before an operator
restart or by another replica is not written twice: the second create answers 409.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from necrocode.clock import Clock
from necrocode.kube import AlreadyExists, ApiError, Kube, core_path
from necrocode.logs import Bound
from necrocode.model import iso

COMPONENT = "necrocode-cancel"


class EventRecorder:
    def __init__(self, kube: Kube, clock: Clock, origin_uid: str, log: Bound):
        self.kube, self.clock, self.origin_uid, self.log = kube, clock, origin_uid, log

    async def emit(self, involved: Mapping[str, Any], key: str, reason: str, message: str,
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
