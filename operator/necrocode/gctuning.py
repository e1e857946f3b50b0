"""How the operator's Python garbage collector runs, and what its pauses cost
(necrocode_gc_pause_seconds).

Why: the cyclic collector stops the event loop while it runs, and a full collection walks every
container object the process holds. During a cancellation of 5,000 runners that is every pod,
task and lease it has read (200,000-300,000 objects), and CPython's defaults (a young collection
every 700 allocations, a full one whenever the objects that survived grew by a quarter) ran
one 18 times, for 1.3-2 s in all, the longest 270-500 ms, collecting next to nothing: the
objects are answers from the API server, freed by their reference counts, not by the collector
(docs/benchmarks.md, session 22). Each such pause held every answer that had arrived, so the
adaptive in-flight limit read them as a slow API server, and every other request waited too.

So the operator, once it has imported everything and before it serves:
- freezes what it has so far (gc.freeze: modules, classes, kopf's registry; about 70,000
  objects that live as long as the process), which no collection walks again;
- collects the young generation every YOUNG allocations instead of 700, so the older
  generations, and with them the full collections, come about 14 times less often.
With both, the same cancellation's pauses of 10 ms or more came to 0.3 s in all, the longest
57 ms (and no full collection among them).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

YOUNG = 10_000
"""Allocations of container objects between two young collections (CPython's default: 700).
The young generation then holds at most this many objects, a few milliseconds to walk."""


def tune(young: int = YOUNG) -> None:
    """Freeze what exists now and space the collections out (call once, after the imports)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


def watch(observe: Callable[[int, float], None]) -> Callable[[str, dict[str, Any]], None]:
    """Report every collection's pause as observe(generation, seconds); returns the callback
    installed in gc.callbacks (remove it from there to stop)."""
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            observe(int(info["generation"]), time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    return callback
