"""When a cancellation's status is written (policies.status_writes, carried out by
tracker.CancellationTracker): table tests of the schedule, and the tracker's writer loop driven
by a clock that moves only when the test moves it (kopf's looptime, by hand). The request
itself is replaced by a recorder: what is tested is when it is made, not what the API does."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest

from necrocode.clock import ManualClock
from necrocode.logs import Bound
from necrocode.model import JOB_CANCELLATION, CancellationStatus
from necrocode.policies.status_writes import WriteSchedule, interval_for
from necrocode.settings import Settings
from necrocode.tracker import CancellationTracker

T0 = datetime(2026, 12, 2, 4, 0, 0, tzinfo=UTC)
TICK = 0.001


# ----------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize(("last_write", "mono", "delay"), [
    (None, 0.0, 0.0),             # never written: a first change goes at once
    (10.0, 10.0, 2.0),            # just written: a whole interval to wait
    (10.0, 11.0, 1.0),
    (10.0, 12.0 - TICK, TICK),    # one tick before the interval ran out
    (10.0, 12.0, 0.0),            # exactly when it ran out
    (10.0, 50.0, 0.0),
])
def test_changes_are_written_at_most_once_per_interval(last_write: float | None, mono: float, delay: float) -> None:
    s = WriteSchedule(interval=2.0)
    if last_write is not None:
        s.wrote(last_write)
    assert s.delay(mono) == pytest.approx(delay)


def test_a_change_during_a_write_brings_one_more_write() -> None:
    s = WriteSchedule(interval=2.0)
    s.changed()
    s.changed()
    s.begin()
    assert not s.dirty  # both changes go with this write
    s.changed()  # arrives while the write is on the wire
    s.end()
    assert s.dirty  # the writer goes round once more


@pytest.mark.parametrize(("in_write", "cancellable"), [(False, True), (True, False)])
def test_a_flush_cancels_a_waiting_write_but_never_one_on_the_wire(in_write: bool, cancellable: bool) -> None:
    s = WriteSchedule(interval=2.0)
    s.changed()
    if in_write:
        s.begin()
        s.changed()
    assert s.flush() is cancellable
    assert not s.dirty  # the flush's own write carries every change


# ----------------------------------------------------------------------------- many at once
@pytest.mark.parametrize(("in_flight", "rate", "interval"), [
    (1, 20.0, 0.5),        # alone: the configured interval
    (10, 20.0, 0.5),       # exactly the rate at the configured interval
    (11, 20.0, 0.55),      # one more: the interval stretches
    (1000, 20.0, 50.0),    # a thousand at once share 20 writes a second
    (1000, 0.0, 0.5),      # rate 0: no shared limit
    (0, 20.0, 0.5),
])
def test_many_cancellations_share_the_status_write_rate(in_flight: int, rate: float, interval: float) -> None:
    assert interval_for(0.5, in_flight, rate) == pytest.approx(interval)


@pytest.mark.usefixtures("clean_settings_env")
def test_the_write_rate_and_step_events_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert (s.status_write_rate, s.step_events) == (5.0, "failures")
    monkeypatch.setenv("NECROCODE_STATUS_WRITE_RATE", "0")
    monkeypatch.setenv("NECROCODE_STEP_EVENTS", "all")
    s = Settings.from_env()
    assert (s.status_write_rate, s.step_events) == (0.0, "all")
    for key, value, message in (
            ("NECROCODE_STEP_EVENTS", "some", "NECROCODE_STEP_EVENTS='some': expected failures or all"),
            ("NECROCODE_STATUS_WRITE_RATE", "-1", "expected status writes per second >= 0 (0: no limit)"),
            ("NECROCODE_STATUS_WRITE_RATE", "nan", "expected status writes per second >= 0")):
        monkeypatch.setenv(key, value)
        with pytest.raises(ValueError, match=re.escape(message)):
            Settings.from_env()
        monkeypatch.delenv(key)


# ----------------------------------------------------------------------------- the writer loop
class LoopClock(ManualClock):
    """A ManualClock whose sleepers wake only when the test moves it past their deadline."""

    def __init__(self, start: datetime):
        super().__init__(start)
        self._moved = asyncio.Event()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def sleep(self, seconds: float) -> None:
        end = self.monotonic() + seconds
        while self.monotonic() < end:
            await self._moved.wait()
        await asyncio.sleep(0)


class Recorded(CancellationTracker):
    """The tracker with its one request replaced by a recorder (and a gate, to hold it on the wire)."""

    def __init__(self, clock: LoopClock, fresh: bool = False):
        super().__init__(None, JOB_CANCELLATION, "ns", "stop", CancellationStatus(),  # type: ignore[arg-type]
                         interval=1.0, clock=clock, log=Bound())
        self.started: list[float] = []
        self.finished = 0
        self.gate = asyncio.Event()
        self.gate.set()
        if not fresh:  # as if its last write was long ago (a fresh one waits: see below)
            self.schedule.last_write = -1e9

    async def _patch(self) -> None:
        self.started.append(self.clock.monotonic())
        await self.gate.wait()
        self.finished += 1


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_burst_of_changes_is_one_write_an_interval_after_the_last() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock)
    t.changed()
    await settle()
    assert t.started == [0.0]  # the first at once
    for _ in range(3):
        t.changed()
    await settle()
    clock.advance(1.0 - TICK)
    await settle()
    assert t.started == [0.0]  # one tick before the interval ran out: nothing yet
    clock.advance(TICK)
    await settle()
    assert t.started == [0.0, pytest.approx(1.0)]  # the three changes, in one write
    clock.advance(10)
    await settle()
    assert len(t.started) == 2


async def test_a_change_while_a_write_is_on_the_wire_is_written_after_it() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock)
    t.gate.clear()
    t.changed()
    await settle()
    t.changed()  # the write of the first change is still on the wire
    await settle()
    assert t.started == [0.0]
    t.gate.set()
    await settle()
    clock.advance(1.0)
    await settle()
    assert t.started == [0.0, 1.0] and t.finished == 2


async def test_a_flush_writes_now_instead_of_the_waiting_write() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock)
    t.changed()
    await settle()
    t.changed()  # waits for the interval
    await settle()
    await t.flush()
    assert t.started == [0.0, 0.0]  # the flush, now
    clock.advance(10)
    await settle()
    assert t.started == [0.0, 0.0]  # the waiting write was cancelled: nothing left to write


async def test_a_flush_waits_for_the_write_on_the_wire_and_never_aborts_it() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock)
    t.gate.clear()
    t.changed()
    await settle()
    flush = asyncio.create_task(t.flush())
    await settle()
    assert not flush.done() and t.started == [0.0]  # waiting for the write on the wire
    t.gate.set()
    await flush
    assert t.started == [0.0, 0.0] and t.finished == 2  # the background write completed, then the flush's


async def test_the_writer_waits_the_stretched_interval_while_many_run() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock)
    t.stretch = lambda base: interval_for(base, 100, 20.0)  # 100 in flight: one write each 5 s
    t.changed()
    await settle()
    t.changed()
    clock.advance(5.0 - TICK)
    await settle()
    assert t.started == [0.0]
    clock.advance(TICK)
    await settle()
    assert t.started == [0.0, pytest.approx(5.0)]


async def test_a_fresh_cancellation_writes_its_first_status_an_interval_late_or_with_a_flush() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock, fresh=True)
    t.changed()  # the start of the cancellation
    await settle()
    clock.advance(1.0 - TICK)
    await settle()
    assert t.started == []  # not at once: a flush may come first and carry it
    await t.flush()  # the total made durable before the first deletion
    clock.advance(10)
    await settle()
    assert t.started == [pytest.approx(1.0 - TICK)]  # one write for both


async def test_after_hold_only_the_flush_writes() -> None:
    clock = LoopClock(T0)
    t = Recorded(clock)
    t.changed()
    await settle()
    assert t.started == [0.0]
    t.changed()  # a background write waits for the interval
    t.hold()  # the terminal status is being put together
    clock.advance(5)
    await settle()
    assert t.started == [0.0]  # the waiting background write did not go
    await t.flush()
    assert t.started == [0.0, 5.0]
