"""Leader election on a coordination.k8s.io Lease, so that of several operator replicas
exactly one acts (high availability without kopf's peering CRDs).

The standby instances wait until the Lease is free or expired; the leader renews it. A leader
that cannot renew in time stops acting (the process exits and is restarted as a standby), so two
instances never act at once for longer than the clock skew allows. Every step of a cancellation
is idempotent, so the new leader simply resumes what the old one was doing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from necrocode.clock import Clock
from necrocode.kube import ApiError, Conflict, Kube, NotFound, lease_path
from necrocode.logs import log
from necrocode.model import iso, parse_time
from necrocode.planning import leader_action

MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro(t: datetime) -> str:
    return t.strftime(MICRO)


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *, clock: Clock,
                 lease_seconds: int = 15, renew_seconds: float = 5.0, retry_seconds: float = 2.0):
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.clock, self.lease_seconds = clock, lease_seconds
        self.renew_seconds, self.retry_seconds = renew_seconds, retry_seconds
        self._last_renew = 0.0

    async def try_acquire(self) -> bool:
        now = self.clock.now()
        path = lease_path(self.namespace, self.name)
        try:
            lease = await self.kube.get(path)
        except NotFound:
            try:
                await self.kube.create(lease_path(self.namespace), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                             "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}})
                self._last_renew = self.clock.monotonic()
                log("leadership acquired", identity=self.identity, lease=f"{self.namespace}/{self.name}",
                    previous=None, at=iso(now))
                return True
            except Conflict:
                return False
        spec = lease.get("spec") or {}
        action = leader_action(spec.get("holderIdentity"), parse_time(spec.get("renewTime")),
                               int(spec.get("leaseDurationSeconds") or self.lease_seconds), self.identity, now)
        if action == "wait":
            return False
        new = dict(spec, holderIdentity=self.identity, renewTime=_micro(now), leaseDurationSeconds=self.lease_seconds)
        if action == "take":
            new["acquireTime"] = _micro(now)
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new
        try:
            await self.kube.request("PUT", path, body=lease)
        except (Conflict, NotFound):
            return False
        self._last_renew = self.clock.monotonic()
        if action == "take":
            log("leadership acquired", identity=self.identity, lease=f"{self.namespace}/{self.name}",
                previous=spec.get("holderIdentity"), at=iso(now))
        return True

    async def acquire(self) -> None:
        """Wait until this instance leads."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    return
            except ApiError as exc:
                log("leader election error", identity=self.identity, error=str(exc))
            if not announced:
                log("standing by: another instance leads", identity=self.identity,
                    lease=f"{self.namespace}/{self.name}")
                announced = True
            await self.clock.sleep(self.retry_seconds)

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew until renewal fails for too long; then call on_lost and return."""
        while True:
            await self.clock.sleep(self.renew_seconds)
            ok = False
            try:
                ok = await self.try_acquire()
            except ApiError as exc:
                log("lease renewal failed", identity=self.identity, error=str(exc))
            if not ok and self.clock.monotonic() - self._last_renew > self.lease_seconds - self.renew_seconds:
                log("leadership lost; stopping", identity=self.identity)
                on_lost()
                return

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown, so a standby takes over at once."""
        path = lease_path(self.namespace, self.name)
        try:
            lease = await self.kube.get(path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                await self.kube.request("PUT", path, body=lease)
        except ApiError:
            pass


async def run_leading(elector: LeaderElector, operate: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Acquire leadership, run `operate(stop_flag)` while leading; exit code 1 when it was lost."""
    await elector.acquire()
    stop = asyncio.Event()
    lost = False

    def on_lost() -> None:
        nonlocal lost
        lost = True
        stop.set()

    keeper = asyncio.create_task(elector.keep(on_lost))
    try:
        await operate(stop)
    finally:
        keeper.cancel()
        if not lost:
            await elector.release()
    return 1 if lost else 0
