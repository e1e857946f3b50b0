"""CancellationTracker: one cancellation's status, kept as a value and written to the
resource's status subresource while the work goes on (throttled), and at every step boundary.

The status stored by the API server is the durable record (the seed's file persistence): on
resume the engine reads it back and carries on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from necrocode.clock import Clock
from necrocode.kube import ApiError, Kube, NotFound, nc_path
from necrocode.logs import Bound
from necrocode.model import PLURAL, CancellationStatus
from necrocode.policies.status_writes import WriteSchedule


class CancellationTracker:
    def __init__(self, kube: Kube, kind: str, namespace: str, name: str, status: CancellationStatus,
                 *, interval: float, clock: Clock, log: Bound, stretch: Callable[[float], float] = lambda i: i):
        """`stretch`: the interval to keep now, given the configured one (the service stretches it
        while many cancellations run at once: policies.status_writes.interval_for)."""
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
            if not self.gone:
                await self._patch()

    async def _patch(self) -> None:
        """The one request: the whole status, merged into the status subresource."""
        try:
            await self.kube.merge_patch(self.path, {"status": self.status.dump()})
        except NotFound:
            self.gone = True
            self.log.warning("cancellation resource deleted; status not written")
        except ApiError as exc:
            self.log.warning("status write failed", error=str(exc))
            if exc.status in (400, 422):
                logging.getLogger("necrocode").debug("rejected status: %s", self.status.dump())
            raise
