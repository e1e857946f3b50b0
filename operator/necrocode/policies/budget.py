"""The API budget's token bucket: how many requests may be sent now and when the next may go,
as pure decisions over the bucket's state and the time passed in (seconds on any monotonic
clock; the limiter in necrocode.budget passes the event loop's).

Why a reservation bucket (as client-go's and golang.org/x/time/rate's): each request takes its
token at once, even one not there yet, and waits until the bucket would have had it. Requests
waiting together are then spaced 1/rate apart in the order they asked, with no polling and no
thundering herd when a token comes back; over any window of T seconds no more than
burst + rate * T requests pass, which is the promise the cluster test checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Bucket:
    rate: float
    """Tokens added per second; 0: unlimited (every request passes at once)."""
    burst: int
    """The most tokens the bucket holds: how many requests may go at once after a quiet spell."""
    tokens: float
    """Tokens held at `at` (below 0: reserved ahead by requests still waiting)."""
    at: float
    """When `tokens` was computed (seconds, the caller's clock)."""

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


def full(rate: float, burst: int, now: float) -> Bucket:
    """A bucket that starts full: the first `burst` requests go at once."""
    return Bucket(rate=rate, burst=burst, tokens=float(burst), at=now)


def default_burst(rate: float) -> int:
    """The burst when none is set: one second's worth of the rate (at least 1)."""
    return max(1, math.ceil(rate))


def tokens_at(bucket: Bucket, now: float) -> float:
    """The tokens the bucket holds at `now` (refilled since `at`, never above burst; a `now`
    before `at`, a clock read out of order, adds nothing)."""
    if bucket.unlimited:
        return float(bucket.burst)
    return min(float(bucket.burst), bucket.tokens + max(0.0, now - bucket.at) * bucket.rate)


def take(bucket: Bucket, now: float) -> tuple[Bucket, float]:
    """One request asks at `now`: the bucket after it took its token, and how many seconds it
    must wait before it is sent (0: at once)."""
    if bucket.unlimited:
        return bucket, 0.0
    left = tokens_at(bucket, now) - 1.0
    wait = 0.0 if left >= 0 else -left / bucket.rate
    return replace(bucket, tokens=left, at=max(now, bucket.at)), wait



def try_take(bucket: Bucket, now: float) -> tuple[Bucket, bool]:
    """Something that is worth sending only now asks at `now` (an Event that would say nothing
    new once late): the bucket after it took a token, and True, when one is there; the bucket
    unchanged, and False, when none is (nothing is reserved ahead, so a refusal costs the
    requests that wait for tokens nothing)."""
    if bucket.unlimited:
        return bucket, True
    held = tokens_at(bucket, now)
    if held < 1.0:
        return bucket, False
    return replace(bucket, tokens=held - 1.0, at=max(now, bucket.at)), True
