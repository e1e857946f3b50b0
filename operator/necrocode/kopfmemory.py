"""kopf's memory of each watched object, kept only while kopf has something to do with it.

Why: kopf keeps a memory (a `ResourceMemory`) of every object it watches until the object is
deleted: a shallow copy of the memo, an error throttler, indexing and daemon state and, once a
daemon was spawned for the object, the last body it saw (kopf's processing attaches the body again
on every later event, also after the daemon ended). A finished cancellation record stays in the
cluster for its TTL (7 days in the chart) with nothing left for kopf to do: its daemon's filter
(`not_finished`) no longer matches, so kopf spawns nothing and drops the record's finalizer, and
the TTL handler keeps a plain copy of the three fields it needs. Kept, each such memory cost the
operator ~36 KiB (tracemalloc, docs/benchmarks.md "Leak check"): 35 MiB per 1,000 records kept,
growing with every cancellation served until the TTL removes them.

How, through `kopf.operator(memories=...)`:
  - every body kopf receives loses `metadata.managedFields` before kopf keeps or reads it: no
    handler reads them, and they are the largest part of a record's metadata (controller-runtime's
    informer caches drop them the same way, with `TransformStripManagedFields`);
  - a finished record's memory is not kept once none of its daemons runs: an event of such a
    record is processed with a memory of its own, made for that event and dropped after it, as
    kopf does for the admission of an object that does not exist yet (`ephemeral`). A memory
    whose daemon still runs when its record finishes (kopf stops it, or it returns) is dropped
    by a sweep once the daemon has gone: at the next event of any object, and every
    SWEEP_SECONDS while one waits.

What is lost with a dropped memory, and why that is safe here: kopf's `forever_stopped` (a
daemon that returned is not spawned again; a finished record matches no daemon anyway, and one
whose status becomes unfinished again is resumed, as after a restart), the error throttler (a
failing handler of a finished record is retried at its next event, not later) and the memo copy
(every handler of this operator reads the shared objects of the memo, none keeps state per object).
This operator has no kopf indices, timers or changing handlers, whose state would be lost too.

kopf's `ResourceMemories` is not part of kopf's documented API; `requirements.lock` pins kopf, and
tests/unit/test_kopf_memory.py checks that the methods overridden here are still the ones kopf calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kopf._core.reactor import inventory

from necrocode.model import TERMINAL_PHASES

SWEEP_SECONDS = 2.0
"""While a finished record's memory waits for its daemon to go, it is looked at this often."""

_TERMINAL = frozenset(p.value for p in TERMINAL_PHASES)


def finished(raw_body: Mapping[str, Any]) -> bool:
    """Whether this body is a cancellation record in a terminal phase (anything else, including
    a status that is not a mapping, is not)."""
    status = raw_body.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return isinstance(phase, str) and phase in _TERMINAL


def strip(raw_body: Any) -> None:
    """Drop metadata.managedFields from a body, in place (what kopf keeps and hands on)."""
    meta = raw_body.get("metadata") if isinstance(raw_body, dict) else None
    if isinstance(meta, dict):
        meta.pop("managedFields", None)


class LeanMemories(inventory.ResourceMemories):
    """kopf's per-object memories, without managedFields and without finished records (module
    docstring: why, and why it is safe)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: set[str] = set()
        """Keys of finished records whose memory is kept until their daemons have gone."""
        self._sweeper: asyncio.TimerHandle | None = None

    def kept(self) -> int:
        """How many objects kopf keeps a memory of (for tests and the leak check)."""
        return len(self._items)

    async def recall(
            self,
            raw_body: Any,
            *,
            memobase: Any = None,
            noticed_by_listing: bool = False,
            ephemeral: bool = False,
    ) -> inventory.ResourceMemory:
        strip(raw_body)
        self.sweep()
        key = self._build_key(raw_body)
        if not finished(raw_body):
            self._waiting.discard(key)
            return await super().recall(raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing,
                                        ephemeral=ephemeral)
        memory = self._items.get(key)
        if memory is None:  # nothing kept: this event's own memory, dropped after it
            return await super().recall(raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing,
                                        ephemeral=True)
        if memory.daemons_memory.running_daemons:  # kopf still has a daemon to stop or see go
            self._waiting.add(key)
            self._schedule()
        else:
            self._forget(key)
        return memory

    def sweep(self) -> None:
        """Drop the memories of finished records whose daemons have gone."""
        for key in list(self._waiting):
            memory = self._items.get(key)
            if memory is None or not memory.daemons_memory.running_daemons:
                self._forget(key)
        if self._waiting:
            self._schedule()

    def _forget(self, key: str) -> None:
        self._items.pop(key, None)
        self._waiting.discard(key)

    def _schedule(self) -> None:
        if self._sweeper is None or self._sweeper.cancelled():
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._swept)

    def _swept(self) -> None:
        self._sweeper = None
        self.sweep()
