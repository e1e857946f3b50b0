"""CancellationTracker: one cancellation's status, kept as a value and written to the
resource's status subresource while the work goes on (throttled), and at every step boundary.

The status stored by the API server is the durable record (the seed's file persistence): on
resume the engine reads it back and carries on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from necrocode.clock import Clock
from necrocode.kube import ApiError, Kube, NotFound, nc_path
from necrocode.logs import Bound
from necrocode.model import PLURAL, CancellationStatus


class CancellationTracker:
    def __init__(self, kube: Kube, kind: str, namespace: str, name: str, status: CancellationStatus,
                 *, interval: float, clock: Clock, log: Bound):
        self.kube, self.kind, self.namespace, self.name = kube, kind, namespace, name
        self.status = status
        self.interval, self.clock, self.log = interval, clock, log
        self._last_write = -1e9
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._lock = asyncio.Lock()
        self.writes = 0
        self.gone = False
        self._in_write = False

    @property
    def path(self) -> str:
        return nc_path(self.namespace, PLURAL[self.kind], self.name, "status")

    def changed(self) -> None:
        """Something in the status moved; write it soon (at most one write per interval).

        A change that arrives while a write is in flight marks the status dirty again, so the
        writer goes round once more: no update is lost, and bursts collapse into one write."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._writer())

    async def _writer(self) -> None:
        while self._dirty:
            await self.clock.sleep(max(0.0, self._last_write + self.interval - self.clock.monotonic()))
            self._dirty = False
            self._in_write = True
            try:
                with contextlib.suppress(ApiError):
                    await self._write()
            finally:
                self._in_write = False

    async def flush(self) -> None:
        """Write now (the start and the end of a cancellation).

        A background write already on the wire is awaited, never aborted: an aborted request
        may still be applied by the server after ours, and put an older status back."""
        self._dirty = False
        pending = self._pending
        if pending is not None and not pending.done():
            if not self._in_write:
                pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, ApiError):
                await pending
        await self._write()

    async def _write(self) -> None:
        async with self._lock:
            self._last_write = self.clock.monotonic()
            if self.gone:
                return
            try:
                await self.kube.merge_patch(self.path, {"status": self.status.dump()})
                self.writes += 1
            except NotFound:
                self.gone = True
                self.log.warning("cancellation resource deleted; status not written")
            except ApiError as exc:
                self.log.warning("status write failed", error=str(exc))
                if exc.status in (400, 422):
                    logging.getLogger("necrocode").debug("rejected status: %s", self.status.dump())
                raise
