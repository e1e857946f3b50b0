"""WatchedWait: a bounded wait that follows a set of objects (one label-selector list, then a
watch from its resourceVersion) until its rules say it is over: the deadline passed, what it
waits for happened, or the cancellation was forced. mode Drain's TaskDrainer (the job's tasks)
and the cooperative window's CooperativeWindow (the runner pods) are its two uses; each feeds
its policies what the API says, this module only does the following.

A watch that ends (its timeout, a reset, 410 Gone) is followed by a new list: what happened in
between is in that list, so nothing is missed; a list that fails past the client's retries is
tried again after a short pause until the deadline, after which the wait ends with what it last
saw (the next steps act on whatever is left).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

from necrocode.clock import Clock
from necrocode.kube import ApiError, Kube
from necrocode.logs import Bound

Obj = dict[str, Any]
RELIST_PAUSE_SECONDS = 1.0
"""After a failed list (past the client's own retries): the pause before the next one."""
WATCH_SECONDS = 60
"""A watch is renewed at least this often (a fresh list each time: bounded staleness)."""
Tally = TypeVar("Tally")
End = TypeVar("End", bound=str)


class WatchedWait(Generic[Tally, End]):
    """A use says what its tally of the objects is (tally_of) and, from it, whether the wait is
    over (rule: both pure, in policies); `on_tally` hears each new tally (the status)."""

    def __init__(self, kube: Kube, path: str, selector: str, *, keep: Callable[[Obj], bool], clock: Clock,
                 log: Bound, what: str, tally: Tally, on_tally: Callable[[Tally], None]):
        self.kube, self.path, self.selector, self.keep = kube, path, selector, keep
        self.clock, self.log, self.what = clock, log, what
        self.tally, self.on_tally = tally, on_tally

    def tally_of(self, objs: dict[str, Obj]) -> Tally:
        """Where the wait stands, from the objects followed (by name) as they are now."""
        raise NotImplementedError

    def rule(self, now: datetime, deadline: datetime, tally: Tally, forced: bool) -> float | End:
        """Seconds the wait may go on (> 0), or why it is over."""
        raise NotImplementedError

    def observe(self, objs: dict[str, Obj]) -> None:
        tally = self.tally_of(objs)
        if tally != self.tally:
            self.tally = tally
            self.on_tally(tally)

    def verdict(self, deadline: datetime, forced: bool) -> float | End:
        return self.rule(self.clock.now(), deadline, self.tally, forced)

    async def wait(self, deadline: datetime, forced: asyncio.Event) -> End:
        """Until the wait is over; returns why (the tally holds what it last saw)."""
        while True:
            try:
                items, rv = await self.kube.list_all(self.path, label_selector=self.selector)
            except ApiError as exc:
                self.log.warning(f"{self.what}: listing failed; trying again", error=exc.message)
                verdict = self.verdict(deadline, forced.is_set())
                if isinstance(verdict, str):
                    return verdict
                await _pause(min(verdict, RELIST_PAUSE_SECONDS), forced)
                continue
            objs = {o["metadata"]["name"]: o for o in items if self.keep(o)}
            verdict = self._decide(objs, deadline, forced)
            if isinstance(verdict, str):
                return verdict
            await self._follow(objs, rv, deadline, forced, verdict)
            verdict = self._decide(objs, deadline, forced)
            if isinstance(verdict, str):
                return verdict

    def _decide(self, objs: dict[str, Obj], deadline: datetime, forced: asyncio.Event) -> float | End:
        self.observe(objs)
        return self.verdict(deadline, forced.is_set())

    async def _follow(self, objs: dict[str, Obj], rv: str, deadline: datetime, forced: asyncio.Event,
                      left: float) -> None:
        """Apply watch events to `objs` until the wait is over, or the watch ends (at most
        `left` seconds, the time to the deadline; at once when forced)."""
        async def consume() -> None:
            async for event in self.kube.watch(self.path, label_selector=self.selector, resource_version=rv,
                                               timeout_seconds=int(min(left, WATCH_SECONDS)) + 1):
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                if event.get("type") == "BOOKMARK" or not name:
                    continue
                if event.get("type") == "DELETED" or not self.keep(obj):
                    objs.pop(name, None)
                else:
                    objs[name] = obj
                if isinstance(self._decide(objs, deadline, forced), str):
                    return

        watcher = asyncio.create_task(consume())
        force = asyncio.create_task(forced.wait())
        try:
            await asyncio.wait({watcher, force}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watcher, force):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await force
            try:
                await watcher
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # a reset, 410 Gone, a refusal: list again, after a pause
                self.log.info(f"{self.what}: watch ended; listing again", error=str(exc))
                await _pause(min(left, RELIST_PAUSE_SECONDS), forced)


async def _pause(seconds: float, forced: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await forced.wait()
