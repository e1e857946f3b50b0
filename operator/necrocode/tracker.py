"""CancellationTracker: one cancellation's status, kept as a value and written to the
resource's status subresource while the work goes on (throttled), and at every step boundary.

The status stored by the API server is the durable record (the seed's file persistence): on
resume the engine reads it back and carries on from there.

Every write is conditional on the record's resourceVersion as this tracker last saw it. A write
can reach the API server after its sender died: an operator killed with a status PATCH on the
wire (in a proxy's or the kernel's buffers), whose successor resumed the cancellation and
finished it meanwhile. Unconditional, that late write put the old, running status back over the
final one, and nothing would ever finish the record again (kopf does not restart a daemon that
returned); conditional, it is refused (409). A conflict the live writer meets is re-read: a
final status stored by someone else is kept (this write is dropped), anything else is written
over with the current resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from necrocode.clock import Clock
from necrocode.kube import ApiError, Conflict, Kube, NotFound, nc_path
from necrocode.logs import Bound
from necrocode.model import PLURAL, TERMINAL_PHASES, CancellationStatus
from necrocode.policies.status_writes import WriteSchedule

CONFLICT_RETRIES = 5
"""Conflicting writes re-read and tried again, at most (each conflict is someone else's write
in between: kopf's finalizer, our own label patch, a spec change)."""
FINAL_PHASES = frozenset(p.value for p in TERMINAL_PHASES)


class CancellationTracker:
    def __init__(self, kube: Kube, kind: str, namespace: str, name: str, status: CancellationStatus,
                 *, interval: float, clock: Clock, log: Bound, stretch: Callable[[float], float] = lambda i: i,
                 resource_version: str | None = None):
        """`stretch`: the interval to keep now, given the configured one (the service stretches it
        while many cancellations run at once: policies.status_writes.interval_for).
        `resource_version`: the record's, from the body the work started from (None: the first
        write is unconditional)."""
        self.resource_version = resource_version
        self.superseded = False
        """A final status written by someone else was found: this tracker writes no more."""
        self.kube, self.kind, self.namespace, self.name = kube, kind, namespace, name
        self.status = status
        self.clock, self.log = clock, log
        self.base_interval, self.stretch = interval, stretch
        self.schedule = WriteSchedule(interval, last_write=clock.monotonic())
        """The first background write waits an interval too: a step that makes the status durable
        (before the first deletion) or the end of the cancellation usually writes first, and
        carries it (a cancellation that ends within the interval is one write)."""
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.gone = False
        self.finishing = False
        """Set by hold(): the terminal status is being put together; only flush() writes now."""

    @property
    def path(self) -> str:
        return nc_path(self.namespace, PLURAL[self.kind], self.name, "status")

    def changed(self) -> None:
        """Something in the status moved; write it soon (policies.status_writes: at most one
        write per interval, bursts collapsed, no update lost)."""
        self.schedule.changed()
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._writer())

    async def _writer(self) -> None:
        while self.schedule.dirty:
            self.schedule.interval = self.stretch(self.base_interval)
            await self.clock.sleep(self.schedule.delay(self.clock.monotonic()))
            self.schedule.begin()
            try:
                with contextlib.suppress(ApiError):
                    await self._write(background=True)
            finally:
                self.schedule.end()

    def hold(self) -> None:
        """No background write from now on: the status is about to become terminal, and its
        final Event and counters must be written before anyone (kopf's daemon filter included,
        which stops the daemon once the phase is terminal) can see that phase. flush() writes it."""
        self.finishing = True

    async def flush(self) -> None:
        """Write now (the start and the end of a cancellation), after a background write
        already on the wire (never aborted: policies.status_writes.WriteSchedule.flush)."""
        cancellable = self.schedule.flush()
        pending = self._pending
        if pending is not None and not pending.done():
            if cancellable:
                pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ApiError):
                await pending
        await self._write()

    async def _write(self, background: bool = False) -> None:
        async with self._lock:
            if background and self.finishing:
                return  # the body is built right below, with no pause: a held status never goes
            self.schedule.wrote(self.clock.monotonic())
            if not self.gone and not self.superseded:
                await self._patch()

    async def _patch(self) -> None:
        """The one request: the whole status, merged into the status subresource, on the
        condition that the record is still at the resourceVersion last seen (module docstring)."""
        body: dict[str, object] = {"status": self.status.dump()}
        for attempt in range(1, CONFLICT_RETRIES + 1):
            if self.resource_version:
                body["metadata"] = {"resourceVersion": self.resource_version}
            try:
                answer = await self.kube.merge_patch(self.path, body, meta_only=True)
            except NotFound:
                self.gone = True
                self.log.warning("cancellation resource deleted; status not written")
                return
            except Conflict as exc:
                if attempt == CONFLICT_RETRIES or not await self._reread():
                    if self.superseded or self.gone:
                        return
                    self.log.warning("status write failed", error=str(exc))
                    raise
                continue
            except ApiError as exc:
                self.log.warning("status write failed", error=str(exc))
                if exc.status in (400, 422):
                    logging.getLogger("necrocode").debug("rejected status: %s", self.status.dump())
                raise
            self.resource_version = (answer.get("metadata") or {}).get("resourceVersion") or None
            return

    def saw(self, record: dict[str, object] | None) -> None:
        """The answer of a write of the record made elsewhere in this run (its labels): its
        resourceVersion is the one to write the status at next. A stale one only costs a
        conflict and a re-read."""
        meta = (record or {}).get("metadata")
        if isinstance(meta, dict) and meta.get("resourceVersion"):
            self.resource_version = str(meta["resourceVersion"])

    async def _reread(self) -> bool:
        """After a conflict: True to write again (at the record's current resourceVersion);
        False when the record is gone, or final by someone else's write (kept: superseded)."""
        try:
            current = await self.kube.get(nc_path(self.namespace, PLURAL[self.kind], self.name))
        except NotFound:
            self.gone = True
            return False
        meta, stored = current.get("metadata") or {}, current.get("status") or {}
        if stored.get("phase") in FINAL_PHASES:
            self.superseded = True
            self.log.warning("status already final, written by another run; this write dropped",
                             stored_phase=stored.get("phase"), phase=getattr(self.status.phase, "value", self.status.phase))
            return False
        self.resource_version = meta.get("resourceVersion") or None
        return True
