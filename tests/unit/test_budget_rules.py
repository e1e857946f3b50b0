"""The API budget (issue 19): the token bucket's decisions as table tests over the time passed
in (policies.budget), the settings that configure it and their refusals, and the limiter's
promises on a real event loop (in-flight slots, the cap on a step's workers). The cluster test
test_flow_control.py shows the rate holds against a real API server."""

from __future__ import annotations

import asyncio
import re

import pytest

from necrocode.budget import CURRENT, Budget
from necrocode.concurrency import bounded
from necrocode.policies.budget import Bucket, default_burst, full, take, tokens_at, try_take
from necrocode.settings import Settings


# ----------------------------------------------------------------------------- the bucket
@pytest.mark.parametrize(("rate", "burst"), [(0.5, 1), (1, 1), (20, 20), (20.5, 21), (1000, 1000)])
def test_the_default_burst_is_one_seconds_worth(rate: float, burst: int) -> None:
    assert default_burst(rate) == burst


@pytest.mark.parametrize(("tokens", "at", "now", "want"), [
    (5.0, 0.0, 0.0, 5.0),     # no time passed
    (0.0, 0.0, 0.1, 1.0),     # 10/s: one token in 0.1 s
    (0.0, 0.0, 10.0, 5.0),    # never above burst
    (-3.0, 0.0, 0.2, -1.0),   # reserved ahead: paid back as time passes
    (2.0, 1.0, 0.5, 2.0),     # a time before the last: adds nothing
])
def test_tokens_refill_at_the_rate_up_to_the_burst(tokens: float, at: float, now: float, want: float) -> None:
    assert tokens_at(Bucket(rate=10, burst=5, tokens=tokens, at=at), now) == pytest.approx(want)


@pytest.mark.parametrize(("tokens", "now", "want_wait", "want_tokens"), [
    (5.0, 0.0, 0.0, 4.0),     # a token there: at once
    (1.0, 0.0, 0.0, 0.0),     # the last one
    (0.0, 0.0, 0.1, -1.0),    # none: wait one period
    (-2.0, 0.0, 0.3, -3.0),   # two reserved ahead: third in line
    (-2.0, 0.3, 0.0, 0.0),    # ...asked when they are paid back: at once
])
def test_a_request_takes_a_token_and_waits_its_turn(tokens: float, now: float, want_wait: float,
                                                    want_tokens: float) -> None:
    after, wait = take(Bucket(rate=10, burst=5, tokens=tokens, at=0.0), now)
    assert wait == pytest.approx(want_wait)
    assert after.tokens == pytest.approx(want_tokens)


def test_an_unlimited_bucket_never_waits() -> None:
    bucket = full(0, 1, 0.0)
    for _ in range(1000):
        bucket, wait = take(bucket, 0.0)
        assert wait == 0


@pytest.mark.parametrize(("rate", "burst"), [(20, 20), (20, 5), (3, 1), (100, 200)])
def test_no_window_sends_more_than_burst_plus_rate_times_its_length(rate: float, burst: int) -> None:
    """A thousand requests asking at once, then more at random times: the send times the
    bucket gives never put more than burst + rate * T into any window of T seconds."""
    bucket = full(rate, burst, 0.0)
    sends = []
    asks = [0.0] * 300 + [0.5 * i / 7 for i in range(300)]
    for ask in sorted(asks):
        bucket, wait = take(bucket, ask)
        sends.append(ask + wait)
    sends.sort()
    for window in (0.25, 1.0, 3.0):
        j = 0
        for i, start in enumerate(sends):
            while j < len(sends) and sends[j] <= start + window + 1e-9:
                j += 1
            assert j - i <= burst + rate * window + 1e-6


@pytest.mark.parametrize(("tokens", "now", "want_ok", "want_tokens"), [
    (5.0, 0.0, True, 4.0),     # a token there: taken
    (1.0, 0.0, True, 0.0),     # the last one
    (0.5, 0.0, False, 0.5),    # half a token: refused, nothing reserved ahead
    (0.5, 0.05, True, 0.0),    # ...asked when the rest came in (10/s): taken
    (0.0, 10.0, True, 4.0),    # a quiet spell refills to the burst, no more
])
def test_a_detail_event_takes_a_token_only_when_one_is_there(tokens: float, now: float, want_ok: bool,
                                                             want_tokens: float) -> None:
    after, ok = try_take(Bucket(rate=10, burst=5, tokens=tokens, at=0.0), now)
    assert ok is want_ok
    assert tokens_at(after, now) == pytest.approx(want_tokens)


@pytest.mark.parametrize(("rate", "burst"), [(10, 200), (0.5, 3), (3, 1)])
def test_refusals_never_push_the_next_event_back(rate: float, burst: int) -> None:
    """A thousand Events asked at once, then steadily: exactly burst + rate * T pass in T
    seconds however many were refused meanwhile (a refusal reserves nothing), and 0 a second
    passes them all."""
    bucket = full(rate, burst, 0.0)
    passed = 0
    for _ in range(1000):
        bucket, ok = try_take(bucket, 0.0)
        passed += ok
    assert passed == burst
    for i in range(1, 1001):  # 100 asks a second for 10 s
        bucket, ok = try_take(bucket, i / 100)
        passed += ok
    assert passed == pytest.approx(burst + rate * 10, abs=1)
    unlimited = full(0, 1, 0.0)
    assert all(try_take(unlimited, 0.0)[1] for _ in range(1000))


# ----------------------------------------------------------------------------- settings
@pytest.mark.usefixtures("clean_settings_env")
def test_the_budget_settings_default_to_todays_behaviour_and_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert (s.concurrency, s.api_qps, s.api_burst, s.cancellation_concurrency, s.cancellation_qps) == (50, 0, 0, 0, 0)
    assert s.adaptive_concurrency  # since session 20: at most 50, fewer while the API server slows with more
    assert s.adaptive_tolerance == 0.25
    for k, v in {"NECROCODE_ADAPTIVE_TOLERANCE_PERCENT": "50", "NECROCODE_CONCURRENCY": "20",
                 "NECROCODE_API_QPS": "150.5", "NECROCODE_API_BURST": "300",
                 "NECROCODE_CANCELLATION_CONCURRENCY": "5", "NECROCODE_CANCELLATION_QPS": "25",
                 "NECROCODE_ADAPTIVE_CONCURRENCY": "False"}.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    assert (s.concurrency, s.api_qps, s.api_burst, s.cancellation_concurrency, s.cancellation_qps) == (20, 150.5, 300,
                                                                                                        5, 25)
    assert not s.adaptive_concurrency
    assert s.adaptive_tolerance == 0.5


@pytest.mark.usefixtures("clean_settings_env")
def test_the_event_budget_defaults_to_ten_a_second_with_a_cancellations_share_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert (s.event_qps, s.event_burst) == (10, 200)
    assert s.event_burst >= 2 * s.task_events_limit  # one cancellation's tasks and forced runners
    monkeypatch.setenv("NECROCODE_EVENT_QPS", "0")
    monkeypatch.setenv("NECROCODE_EVENT_BURST", "1")
    assert (Settings.from_env().event_qps, Settings.from_env().event_burst) == (0, 1)


@pytest.mark.parametrize(("env", "message"), [
    ({"NECROCODE_EVENT_QPS": "-3"}, "NECROCODE_EVENT_QPS='-3': expected requests per second >= 0 (0: no limit)"),
    ({"NECROCODE_EVENT_BURST": "0"}, "NECROCODE_EVENT_BURST='0': expected Events at once after a quiet spell, 1 to"),
    ({"NECROCODE_CONCURRENCY": "0"}, "NECROCODE_CONCURRENCY='0': expected requests in flight, 1 to 10000"),
    ({"NECROCODE_CONCURRENCY": "many"}, "expected requests in flight, 1 to 10000"),
    ({"NECROCODE_API_QPS": "-1"}, "NECROCODE_API_QPS='-1': expected requests per second >= 0 (0: no limit)"),
    ({"NECROCODE_API_QPS": "nan"}, "expected requests per second >= 0"),
    ({"NECROCODE_API_QPS": "inf"}, "expected requests per second >= 0"),
    ({"NECROCODE_API_BURST": "2.5"}, "NECROCODE_API_BURST='2.5': expected requests (0: one second's worth"),
    ({"NECROCODE_CANCELLATION_CONCURRENCY": "-2"}, "expected requests in flight per cancellation (0: no own limit)"),
    ({"NECROCODE_CANCELLATION_QPS": "ten"}, "NECROCODE_CANCELLATION_QPS='ten': expected requests per second"),
    ({"NECROCODE_ADAPTIVE_CONCURRENCY": "sometimes"}, "NECROCODE_ADAPTIVE_CONCURRENCY='sometimes': expected true or false"),
    ({"NECROCODE_ADAPTIVE_TOLERANCE_PERCENT": "0"},
     "NECROCODE_ADAPTIVE_TOLERANCE_PERCENT='0': expected a percentage of the round trip at 3 in flight, 5 to 400"),
    ({"NECROCODE_ADAPTIVE_TOLERANCE_PERCENT": "0.25"}, "NECROCODE_ADAPTIVE_TOLERANCE_PERCENT='0.25': expected"),
    ({"NECROCODE_ADAPTIVE_TOLERANCE_PERCENT": "25%"}, "NECROCODE_ADAPTIVE_TOLERANCE_PERCENT='25%': expected"),
])
def test_bad_budget_settings_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                  message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env()


# ----------------------------------------------------------------------------- the limiter
async def test_no_more_than_the_budgets_concurrency_is_in_flight() -> None:
    budget = Budget("cancellation", concurrency=3)
    in_flight = peak = 0

    async def request() -> None:
        nonlocal in_flight, peak
        await budget.acquire()
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        budget.release()

    await asyncio.gather(*(request() for _ in range(20)))
    assert peak == 3


async def test_waits_are_reported_by_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[tuple[str, float]] = []
    monkeypatch.setattr(Budget, "on_wait", lambda scope, seconds: waits.append((scope, seconds)))
    budget = Budget("global", qps=200, burst=1)
    # asked at once, so each is given its wait before any sleeps: the 5 and 10 ms tokens are
    # reserved whatever a busy machine does to the sleeps (asked one after the other, a late
    # wake-up could find the third token already there, and there would be one wait to report)
    await asyncio.gather(*(budget.acquire(hold=False) for _ in range(3)))
    assert [s for s, _ in waits] == ["global", "global"]  # the first went at once
    assert all(0 < w <= 0.011 for _, w in waits)


async def test_a_steps_workers_are_capped_by_the_cancellations_in_flight_budget() -> None:
    """concurrency.bounded runs no more workers than the cancellation may have requests in
    flight: the rest would only wait in the client holding their item."""
    running = peak = 0

    async def work(_: object) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    token = CURRENT.set(Budget("cancellation", concurrency=4))
    try:
        await bounded(range(30), work, 50)
    finally:
        CURRENT.reset(token)
    assert peak == 4
    peak = 0
    await bounded(range(30), work, 10)  # outside a cancellation: the step's own limit
    assert peak == 10
