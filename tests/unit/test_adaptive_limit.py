"""The adaptive in-flight limit (policies.adaptive; issue 19, item 2): its decisions as table
tests over the round trips and the time passed in, the two kinds of API server it is for (a far
one with CPU to spare, where it opens up to the most in flight; a busy one whose answers slow
with every request more, where it stays a few above the least), and the in-flight slots whose
number changes while requests wait (budget.Slots) on a real event loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from necrocode.budget import Budget, Slots
from necrocode.policies.adaptive import (
    CALIBRATION_SAMPLES,
    MIN_WINDOW,
    Gradient,
    Limit,
    allowed,
    median,
    next_limit,
    observe,
    remembered,
    start,
    window_size,
)

G = Gradient(low=3, high=50, tolerance=0.25, recalibrate_seconds=30.0)


def calibrated(limit: float, min_rtt: float = 0.010, calibrate_at: float = 100.0) -> Limit:
    return Limit(limit=limit, min_rtt=min_rtt, epoch=0, samples=(), calibrate_at=calibrate_at)


def feed(s: Limit, rtts: list[float], now: float = 0.0, epoch: int | None = None) -> Limit:
    for rtt in rtts:
        s = observe(G, s, rtt, s.epoch if epoch is None else epoch, now)
    return s


# ----------------------------------------------------------------------------- decisions
def test_it_starts_at_the_low_limit_measuring_the_round_trip() -> None:
    s = start(G, 5.0)
    assert (allowed(s), s.min_rtt, s.epoch) == (3, None, 0)
    assert allowed(start(Gradient(low=3, high=2), 0.0)) == 2  # never above the most allowed


def test_min_rtt_is_the_median_of_the_calibrations_round_trips() -> None:
    rtts = [0.004] * (CALIBRATION_SAMPLES // 2) + [0.006] * (CALIBRATION_SAMPLES // 2 - 1) + [5.0]
    s = feed(start(G, 0.0), rtts[:-1], now=1.0)
    assert s.min_rtt is None and len(s.samples) == CALIBRATION_SAMPLES - 1  # one short
    s = feed(s, rtts[-1:], now=1.0)
    assert s.min_rtt == pytest.approx(0.005)  # one slow answer does not move it
    assert (s.samples, s.calibrate_at, allowed(s)) == ((), 31.0, 3)


@pytest.mark.parametrize("rtt", [math.nan, math.inf, -0.001])
def test_a_round_trip_that_is_not_one_is_not_counted(rtt: float) -> None:
    assert feed(start(G, 0.0), [rtt]).samples == ()


def test_a_request_sent_in_an_earlier_calibration_is_not_counted() -> None:
    s = Limit(limit=3, min_rtt=None, epoch=2, samples=(), calibrate_at=0.0)
    assert feed(s, [0.5] * 50, epoch=1) == s


@pytest.mark.parametrize(("limit", "window_rtt", "want"), [
    (3, 0.010, 4),                              # as fast as at the low limit: one more in flight
    (16, 0.0125, 17),                           # within the tolerance: still as fast
    (16, 0.001, 17),                            # faster than ever: no more than that
    (16, 0.025, 8),                             # slower: what brings it back to the tolerance
    (16, 0.015, 16 * 0.0125 / 0.015),
    (16, 0.100, 8),                             # ten times: never below half at once
    (50, 0.010, 50),                            # never above the most
    (4, 1.0, 3),                                # never below the least
])
def test_the_limit_grows_while_answers_come_as_fast_and_shrinks_as_they_slow(limit: float, window_rtt: float,
                                                                             want: float) -> None:
    assert next_limit(G, limit, 0.010, window_rtt) == pytest.approx(want)


def test_the_limit_changes_once_a_window_is_full() -> None:
    s = calibrated(16)
    s = feed(s, [0.010] * 15, now=1.0)
    assert (s.limit, len(s.samples)) == (16, 15)  # a window is as many round trips as the limit
    s = feed(s, [0.010], now=1.0)
    assert (s.limit, s.samples) == (17, ())
    small = feed(calibrated(3), [0.010] * (MIN_WINDOW - 1), now=1.0)
    assert small.limit == 3  # and at least MIN_WINDOW of them


def test_min_rtt_is_measured_again_once_its_time_has_come() -> None:
    s = feed(calibrated(40, calibrate_at=30.0), [0.010] * 40, now=30.0)
    assert (allowed(s), s.min_rtt, s.epoch, s.samples) == (3, None, 1, ())
    s = feed(s, [0.020] * CALIBRATION_SAMPLES, now=31.0)
    assert (s.min_rtt, s.calibrate_at) == (pytest.approx(0.020), 61.0)


def test_min_rtt_is_the_least_calibration_of_the_last_five_minutes() -> None:
    def calibrate(s: Limit, rtt: float, now: float) -> Limit:
        s = feed(s, [0.010] * window_size(s), now=now)  # a window, then the calibration's time has come
        assert s.min_rtt is None
        return feed(s, [rtt] * CALIBRATION_SAMPLES, now=now)

    s = feed(start(G, 0.0), [0.010] * CALIBRATION_SAMPLES, now=1.0)
    assert s.min_rtt == pytest.approx(0.010) and s.calibrations == ((1.0, 0.010),)
    s = calibrate(s, 0.025, now=31.0)  # longer, right after a busy window: the earlier one still counts
    assert s.min_rtt == pytest.approx(0.010) and len(s.calibrations) == 2
    s = calibrate(s, 0.008, now=61.0)  # shorter: counts at once
    assert s.min_rtt == pytest.approx(0.008)
    s = calibrate(s, 0.030, now=362.0)  # the 0.010 and 0.008 are more than 300 s old
    assert s.min_rtt == pytest.approx(0.030) and s.calibrations == ((362.0, 0.030),)
    assert G.memory_seconds == 300.0


@pytest.mark.parametrize(("calibrations", "now", "kept"), [
    ((), 0.0, ()),
    (((0.0, 0.01),), 1000.0, ((0.0, 0.01),)),                         # the latest always counts
    (((0.0, 0.01), (100.0, 0.02), (400.0, 0.03)), 400.0, ((100.0, 0.02), (400.0, 0.03))),
    (((0.0, 0.01), (300.0, 0.02)), 300.0, ((0.0, 0.01), (300.0, 0.02))),  # 300 s old: still counts
])
def test_remembered_calibrations(calibrations: tuple[tuple[float, float], ...], now: float,
                                 kept: tuple[tuple[float, float], ...]) -> None:
    assert remembered(G, calibrations, now) == kept


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    assert median([4, 1, 3, 2]) == 2.5 and median([3, 1, 2]) == 2


# ----------------------------------------------------------------------------- two API servers
def run(rtt_at: Callable[[int], float], requests: int, g: Gradient = G) -> list[int]:
    """The limits a client goes through making `requests` writes, each answered after
    rtt_at(requests in flight) seconds (all in flight at the limit, as a big cancellation keeps
    them); time passes by the round trips."""
    s, now, limits = start(g, 0.0), 0.0, []
    for _ in range(requests):
        in_flight = allowed(s)
        now += rtt_at(in_flight) / in_flight
        s = observe(g, s, rtt_at(in_flight), s.epoch, now)
        limits.append(allowed(s))
    return limits


def test_a_far_api_server_with_cpu_to_spare_gets_the_most_in_flight() -> None:
    """30 ms a round trip, whatever is in flight (a managed control plane across a network):
    the limit climbs to 50, one a window, within 1,400 writes, and stays there between
    calibrations."""
    limits = run(lambda n: 0.030, 4000)
    assert limits.index(50) < 1400, limits[:1400:50]
    assert sum(1 for n in limits[1400:] if n == 50) > 0.9 * len(limits[1400:])


def test_a_busy_api_server_keeps_its_queue_short() -> None:
    """2 ms of work a request and one core for it (the benchmark's API server is bound by its
    CPU): each request more in flight is answered later by as much. The limit stays a few above
    the least, where the 50 a fixed limit allows would make everyone else wait 50 requests long."""
    limits = run(lambda n: 0.002 * n, 5000)
    settled = sorted(limits[500:])
    assert 3 <= settled[len(settled) // 2] <= 4, settled[len(settled) // 2]
    assert max(limits) <= 5


@pytest.mark.parametrize(("memory", "least", "most"), [(300.0, 3, 5), (0.0, 40, 50)])
def test_calibrations_lengthened_by_the_limits_own_windows_do_not_open_it(memory: float, least: int,
                                                                          most: int) -> None:
    """The busy API server of the test above, where a calibration made right after a window at
    a higher limit is answered later by what that window left the API server to do (2 ms more
    for each request the window had in flight; calibrations every 3 s, so that 40 s hold a
    dozen). Judged by the latest calibration alone (memory 0), each higher limit lengthens the
    next calibration and the limit climbs to the most; judged by the least of the last five
    minutes, it stays a few above the least."""
    g = Gradient(high=50, recalibrate_seconds=3.0, memory_seconds=memory)
    s, now, limits, backlog = start(g, 0.0), 0.0, [], 0
    for _ in range(20000):
        in_flight = allowed(s)
        rtt = 0.002 * in_flight + (0.002 * backlog if s.min_rtt is None and s.epoch else 0.0)
        now += rtt / in_flight
        calibrating = s.min_rtt is None
        s = observe(g, s, rtt, s.epoch, now)
        if not calibrating:
            backlog = in_flight  # what the latest window had in flight
        limits.append(allowed(s))
    settled = sorted(limits[2000:])
    assert least <= settled[int(len(settled) * 0.9)] <= most, settled[int(len(settled) * 0.9)]


@pytest.mark.parametrize(("tolerance", "least", "most"), [(0.25, 3, 4), (0.5, 4, 5), (1.0, 6, 7)])
def test_the_tolerance_is_how_much_longer_a_busy_api_servers_queue_may_grow(tolerance: float, least: int,
                                                                            most: int) -> None:
    """On the busy API server the limit settles near low x (1 + tolerance): the round trip a
    cancellation may cost everyone else (NECROCODE_ADAPTIVE_TOLERANCE_PERCENT)."""
    limits = run(lambda n: 0.002 * n, 5000, Gradient(high=50, tolerance=tolerance))
    settled = sorted(limits[500:])
    assert least <= settled[len(settled) // 2] <= most, settled[len(settled) // 2]


# ----------------------------------------------------------------------------- slots
async def test_slots_are_first_come_first_served_and_follow_a_new_limit() -> None:
    slots, order = Slots(1), []
    await slots.acquire()

    async def one(i: int) -> None:
        await slots.acquire()
        order.append(i)

    waiting = [asyncio.create_task(one(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert order == [] and slots.locked()
    slots.resize(3)  # a raised limit lets two in at once, in the order they asked
    await asyncio.sleep(0)
    assert order == [0, 1] and slots.used == 3
    slots.resize(1)  # a lowered one lets none in until enough are given back
    slots.release()
    slots.release()
    await asyncio.sleep(0)
    assert order == [0, 1] and slots.used == 1
    slots.release()
    await asyncio.sleep(0)
    assert order == [0, 1, 2] and slots.used == 1
    slots.release()
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2, 3]


async def test_a_waiter_cancelled_gives_back_or_never_takes_its_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    first.cancel()  # cancelled while waiting: takes nothing...
    slots.release()  # ...even when a release passes over it before it has run: second is let in
    [outcome] = await asyncio.gather(first, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    await second
    assert slots.used == 1
    third = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # third let in...
    third.cancel()  # ...and cancelled before it ran: the slot comes back
    await asyncio.gather(third, return_exceptions=True)
    assert slots.used == 0 and not slots.locked()


async def test_an_adaptive_budget_starts_low_and_opens_for_a_fast_server() -> None:
    seen: list[int] = []
    rtts: list[float] = []
    Budget.on_limit, saved = (lambda scope, limit: seen.append(limit)), Budget.on_limit
    Budget.on_min_rtt, saved_rtt = (lambda scope, rtt: rtts.append(rtt)), Budget.on_min_rtt
    try:
        b = Budget("global", concurrency=50, gradient=Gradient(high=50))
        assert b.limit == 3
        for _ in range(1400):
            await b.acquire()
            b.release()
            b.observe(0.030, b.epoch)
        assert b.limit == 50 and seen[-1] == 50 and seen == sorted(seen)
        assert rtts == [0.030]  # measured once: the 1,400 answers came within one recalibration period
        fixed = Budget("global", concurrency=50)
        fixed.observe(5.0, 0)
        assert fixed.limit == 50 and rtts == [0.030]
    finally:
        Budget.on_limit = saved
        Budget.on_min_rtt = saved_rtt
