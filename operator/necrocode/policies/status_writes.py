"""When the tracker writes a cancellation's status: changes at most once per interval, bursts
collapsed into one write, no change lost, and a write already on the wire never aborted. The
times are monotonic seconds; tracker.CancellationTracker carries the writes out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WriteSchedule:
    interval: float
    last_write: float = -1e9
    """When the latest write went out (a first change is written at once)."""
    dirty: bool = False
    """A change not written yet."""
    in_write: bool = False
    """The background writer's request is on the wire."""

    def changed(self) -> None:
        """Something in the status moved. A change that arrives while a write is in flight
        leaves the schedule dirty again, so the writer goes round once more."""
        self.dirty = True

    def delay(self, mono: float) -> float:
        """How long the background writer waits before its next write (0: now)."""
        return max(0.0, self.last_write + self.interval - mono)

    def begin(self) -> None:
        """The background writer writes now: what changed so far goes with it."""
        self.dirty, self.in_write = False, True

    def end(self) -> None:
        self.in_write = False

    def wrote(self, mono: float) -> None:
        self.last_write = mono

    def flush(self) -> bool:
        """A write now (the start and the end of a cancellation) covers every change so far.
        Returns whether a pending background write may be cancelled: only while it waits, never
        once its request is on the wire (an aborted request may still be applied by the server
        after ours, and put an older status back): that one is awaited."""
        self.dirty = False
        return not self.in_write


def interval_for(base: float, in_flight: int, rate: float) -> float:
    """The interval between one cancellation's background writes when `in_flight` cancellations
    run at once and all of them together may write `rate` a second (0: no limit): `base` while
    few run, in_flight / rate when many do (a thousand at 20 a second: one write each 50 s),
    so the progress writes of a mass cancellation cost the API server a fixed rate, not one
    per cancellation per interval."""
    if rate <= 0:
        return base
    return max(base, in_flight / rate)
