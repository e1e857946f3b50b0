"""Leader election on a coordination.k8s.io Lease, so that of several operator replicas
exactly one acts (high availability without kopf's peering CRDs), with fencing: a leader that
cannot renew its Lease stops writing before any other replica may take the Lease.

The timing is client-go's (leaderelection.LeaderElector), measured with each replica's own
monotonic clock, never by comparing wall clocks across machines:

- lease duration L (15 s): a standby takes the Lease only when it has seen the Lease record
  unchanged for L by its own clock (or the Lease is free);
- renew deadline D < L (10 s): the leader counts D from the *start* of its last successful
  renewal. Once D has passed without another, every write of the process is refused before it
  is sent (`Kube.guard` raises NotLeader) and the process stops (exit code 1, restarted as a
  standby). The renewal that succeeded was applied by the API server after it started, and a
  standby sees it no earlier than that, so the standby cannot take the Lease before the
  leader's writes stopped: L - D is the margin, which also covers a write already in flight
  when the deadline passed;
- retry period R < D (2 s): the leader renews, and a standby looks at the Lease, every R.

A process paused (SIGSTOP, a long GC or VM pause) past its deadline resumes with the fence
closed: its monotonic clock kept running, so its first write after resuming is refused, even
before the renewal loop has noticed. Every step of a cancellation is idempotent, so the new
leader simply resumes what the old one was doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from necrocode.clock import Clock
from necrocode.kube import ApiError, Conflict, Credentials, Kube, NotFound, NotLeader, lease_path
from necrocode.logs import log
from necrocode.model import iso
from necrocode.planning import RetryPolicy

MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"
# client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period
RENEW_DEADLINE_RATIO = 10 / 15
RETRY_RATIO = 2 / 15

Attempt = Literal["acquired", "renewed", "held", "conflict"]


def _micro(t: datetime) -> str:
    return t.strftime(MICRO)


# ----------------------------------------------------------------------------- timing rules
@dataclass(frozen=True)
class LeaderTiming:
    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        problems = validate_timing(self.lease_seconds, self.renew_deadline_seconds, self.retry_seconds)
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def scaled(cls, lease_seconds: int, renew_deadline_seconds: float | None = None,
               retry_seconds: float | None = None) -> LeaderTiming:
        """The given lease duration, with client-go's ratios for what is not given."""
        deadline = renew_deadline_seconds if renew_deadline_seconds is not None \
            else round(lease_seconds * RENEW_DEADLINE_RATIO, 3)
        retry = retry_seconds if retry_seconds is not None else round(lease_seconds * RETRY_RATIO, 3)
        return cls(lease_seconds, deadline, retry)


def validate_timing(lease_seconds: float, renew_deadline_seconds: float, retry_seconds: float) -> list[str]:
    """What is wrong with these settings (empty: they are consistent)."""
    out: list[str] = []
    if lease_seconds < 1 or int(lease_seconds) != lease_seconds:
        out.append(f"the lease duration ({lease_seconds}s) must be a whole number of seconds, at least 1")
    if renew_deadline_seconds <= 0 or retry_seconds <= 0:
        out.append(f"the renew deadline ({renew_deadline_seconds}s) and the retry period ({retry_seconds}s) "
                   "must be positive")
    if renew_deadline_seconds >= lease_seconds:
        out.append(f"the renew deadline ({renew_deadline_seconds}s) must be shorter than the lease duration "
                   f"({lease_seconds}s): a leader that cannot renew must stop writing before a standby may take "
                   "the Lease")
    if retry_seconds >= renew_deadline_seconds:
        out.append(f"the retry period ({retry_seconds}s) must be shorter than the renew deadline "
                   f"({renew_deadline_seconds}s), or a single failed renewal loses the Lease")
    return out


def fence_open(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """May the leader write now? Only before the renew deadline, counted on its monotonic clock
    from the start of its last successful renewal."""
    return renewed_at is not None and now - renewed_at < renew_deadline


def standby_may_take(holder: str | None, observed_at: float, now: float, lease_seconds: float) -> bool:
    """May a standby take the Lease? When it is free, or when the record has not changed for a
    whole lease duration by the standby's own monotonic clock since it first saw it (client-go's
    observedTime: clock skew between machines plays no part)."""
    return not holder or now - observed_at > lease_seconds


# ----------------------------------------------------------------------------- the elector's client
class ElectorKube(Kube):
    """The elector's own client. It is not fenced (`Kube.fenced`): a renewal is how the leader
    proves it may go on writing, and it cannot do harm, as it is guarded by the Lease's
    resourceVersion (a stale one fails with a conflict). One attempt per request: the renewal
    loop is the retry, every retry period, until the deadline. Its requests are not counted in
    necrocode_api_requests_total, which counts what the operator does to cancel, not the
    Lease's upkeep."""

    def __init__(self, creds: Credentials, concurrency: int = 2, timeout: float = 10.0,
                 retry: RetryPolicy | None = None):
        super().__init__(creds, concurrency=concurrency, timeout=timeout, retry=retry or RetryPolicy(attempts=1))
        self.fenced = False

    def _count(self, verb: str, path: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1


# ----------------------------------------------------------------------------- the elector
class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *, clock: Clock,
                 timing: LeaderTiming | None = None):
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.clock = clock
        self.timing = timing or LeaderTiming()
        self.renewed_at: float | None = None
        """monotonic time at which the last successful acquisition or renewal *started*"""
        self.lost = False
        self.lost_reason = ""
        self.writes_allowed = 0
        self.writes_refused = 0
        self.last_write_at: float | None = None
        """monotonic time of the last write the fence let through"""
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._on_lost: Callable[[], None] | None = None

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    # ---- fencing
    def guard(self) -> None:
        """Kube.guard while this process leads: called before every write of every fenced client
        of the process (all but the elector's); raises NotLeader once the renew deadline has
        passed, for good."""
        now = self.clock.monotonic()
        if not self.lost and fence_open(self.renewed_at, now, self.timing.renew_deadline_seconds):
            self.writes_allowed += 1
            self.last_write_at = now
            return
        if not self.lost:
            self._lose(f"not renewed within the renew deadline ({self.timing.renew_deadline_seconds}s)")
        self.writes_refused += 1
        if self.writes_refused == 1:
            log("write refused: not the leader", logging.WARNING, identity=self.identity, lease=self.lease,
                reason=self.lost_reason)
        raise NotLeader(0, "NotLeader", f"{self.identity} no longer surely holds the Lease {self.lease} "
                                        f"({self.lost_reason}); write refused before it was sent")

    def install(self) -> None:
        """Fence every client of the process (Kube.guard is a class attribute)."""
        Kube.guard = self.guard

    def _lose(self, reason: str) -> None:
        if self.lost:
            return
        self.lost, self.lost_reason = True, reason
        log("leadership lost; stopping", logging.WARNING, identity=self.identity, lease=self.lease, reason=reason,
            writes_allowed=self.writes_allowed)
        if self._on_lost is not None:
            self._on_lost()

    # ---- the Lease
    async def _attempt(self) -> Attempt:
        """One look at the Lease: acquire or renew it if this instance may."""
        started = self.clock.monotonic()
        now = self.clock.now()
        path = lease_path(self.namespace, self.name)
        try:
            lease = await self.kube.get(path)
        except NotFound:
            try:
                await self.kube.create(lease_path(self.namespace), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.timing.lease_seconds,
                             "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}})
            except Conflict:
                return "conflict"
            self.renewed_at = started
            log("leadership acquired", identity=self.identity, lease=self.lease, previous=None, at=iso(now))
            return "acquired"
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        record = tuple(spec.get(k) for k in ("holderIdentity", "renewTime", "acquireTime", "leaseTransitions",
                                             "leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock.monotonic()
        duration = int(spec.get("leaseDurationSeconds") or self.timing.lease_seconds)
        mine = holder == self.identity
        if not mine and not standby_may_take(holder, self._observed_at, self.clock.monotonic(), duration):
            return "held"
        new = dict(spec, holderIdentity=self.identity, renewTime=_micro(now),
                   leaseDurationSeconds=self.timing.lease_seconds)
        if not mine:
            new["acquireTime"] = _micro(now)
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new
        try:
            await self.kube.request("PUT", path, body=lease)
        except (Conflict, NotFound):
            return "conflict"
        self.renewed_at = started
        if mine:
            return "renewed"
        log("leadership acquired", identity=self.identity, lease=self.lease, previous=holder, at=iso(now))
        return "acquired"

    async def try_acquire(self) -> bool:
        return await self._attempt() in ("acquired", "renewed")

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
                log("standing by: another instance leads", identity=self.identity, lease=self.lease)
                announced = True
            await self.clock.sleep(self.timing.retry_seconds)

    def remaining(self) -> float:
        """Seconds until the renew deadline (<= 0: passed)."""
        if self.renewed_at is None:
            return 0.0
        return self.renewed_at + self.timing.renew_deadline_seconds - self.clock.monotonic()

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew every retry period until the renew deadline passes without a renewal, or another
        instance is seen holding the Lease; then call on_lost (once) and return."""
        self._on_lost = on_lost
        while not self.lost:
            await self.clock.sleep(max(0.0, min(self.timing.retry_seconds, self.remaining())))
            if self.lost:
                break
            left = self.remaining()
            if left <= 0:
                self._lose(f"not renewed within the renew deadline ({self.timing.renew_deadline_seconds}s)")
                break
            try:
                # a renewal that hangs must not hold the loss back past the deadline
                result: Attempt | str = await asyncio.wait_for(self._attempt(), timeout=left)
            except TimeoutError:
                result = "timed out"
            except ApiError as exc:
                result = str(exc)
            if result == "held":
                self._lose("another instance holds the Lease")
            elif result not in ("acquired", "renewed"):
                log("lease renewal failed", logging.WARNING, identity=self.identity, lease=self.lease, error=result,
                    seconds_left=round(self.remaining(), 3))

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
    """Acquire leadership, fence the process's writes, run `operate(stop_flag)` while leading;
    exit code 1 when leadership was lost."""
    await elector.acquire()
    elector.install()
    stop = asyncio.Event()
    keeper = asyncio.create_task(elector.keep(stop.set))
    try:
        await operate(stop)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        if not elector.lost:
            await elector.release()
    return 1 if elector.lost else 0
