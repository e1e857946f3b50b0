"""The adaptive in-flight limit: how many requests the operator keeps in flight, following the
API server's latency (as TCP Vegas, Envoy's adaptive concurrency filter and Netflix's
concurrency-limits do: the round trip at a low limit is the measure of an API server with no
queue of ours), as pure decisions over the round-trip times and the time passed in;
necrocode.budget holds the state and reads the event loop's clock.

Why: requests in flight are what make a big cancellation fast where the API server is far (a
round trip of tens of milliseconds) and has CPU to spare; where its CPU is what bounds the
cancellation (docs/benchmarks.md, sessions 19 and 20: two shared cores), each request beyond a
few only lengthens the queue every other client of the API server waits in: 50 in flight took
the neighbours' p99 to 5-10x its idle value, 4 kept it within 1.3x at nearly the same speed.
One fixed number cannot be right for both, so the limit follows what the API server answers:

- It measures the round trip at a low limit (`low` in flight): the median of
  `CALIBRATION_SAMPLES` requests sent while no more than that were in flight. It measures it
  again every `recalibrate_seconds` (the API server's idle speed changes: other load, a new
  replica), and from the start of each calibration only requests sent in it count. `min_rtt`
  is the least of the calibrations of the last `memory_seconds` (as TCP Vegas keeps the least
  round trip it has seen): a calibration is made right after a window at a higher limit, while
  the API server still works off what that window and everyone else's answers to it left
  (watch events, a neighbour's retries), and one taken then is longer; judged against it, the
  next windows may have more in flight, which makes the next calibration longer still. Beside
  a steady load on the benchmark's API server, the calibrations of one cancellation went from
  10-12 ms to 17-31 ms and the limit's most to 14-33 with them (docs/benchmarks.md, session 22). An
  API server that became slower for good is judged by its new speed once the faster
  calibrations are older than `memory_seconds`; until then the limit stays low, the safe side.
- Then, every window of requests (as many as the limit, at least `MIN_WINDOW`), the median
  round trip of that window against `min_rtt` decides. Within `tolerance` of it, the API server
  answers about as fast as at the low limit: one more may go. Slower, a queue is building: the
  limit becomes what would bring the round trip back to the tolerance if it grew in proportion
  to the requests in flight, limit x min_rtt x (1 + tolerance) / window's, never less than half
  at once (as TCP Vegas: up by one, down in proportion). A far, idle API server answers as fast
  with more in flight, so the limit climbs to `high`, one a window (about 1,300 writes from 3
  to 50); one whose CPU is the bottleneck answers each request later the more there are, so
  the limit stays near low x (1 + tolerance). Growing by one, not by a square root as the
  first version did, keeps a few windows that happen to be fast from taking the limit to 20 on
  such an API server (docs/benchmarks.md, session 20).
- Only writes are measured (necrocode.kube): one object each, of like cost, so their round
  trips say how busy the API server is, not how big an answer was (a list of 5,000 tasks is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

CALIBRATION_SAMPLES = 20
"""Round trips at the low limit that give min_rtt (their median: one slow answer does not move it)."""
MIN_WINDOW = 10
"""The fewest round trips between two changes of the limit (a window's median needs a few)."""


@dataclass(frozen=True)
class Gradient:
    """The controller's settings."""

    low: int = 3
    """The fewest requests in flight, and the limit while min_rtt is measured."""
    high: int = 50
    """The most requests in flight (NECROCODE_CONCURRENCY)."""
    tolerance: float = 0.25
    """How much above min_rtt a window's round trip may be and still count as not slower."""
    recalibrate_seconds: float = 30.0
    """How often min_rtt is measured again (monotonic seconds; while requests are made)."""
    memory_seconds: float = 300.0
    """How long a calibration counts towards min_rtt (the least of those this recent)."""


@dataclass(frozen=True)
class Limit:
    """The controller's state."""

    limit: float
    """Requests allowed in flight (allowed() rounds it down)."""
    min_rtt: float | None
    """The round trip at the low limit (seconds); None while it is measured."""
    epoch: int
    """Counts calibrations: a round trip of a request sent in an earlier one is not counted."""
    samples: tuple[float, ...]
    """The round trips of the current calibration or window."""
    calibrate_at: float
    """When min_rtt is measured again (the caller's clock)."""
    calibrations: tuple[tuple[float, float], ...] = ()
    """(when, median round trip) of each calibration of the last memory_seconds, oldest first."""


def start(g: Gradient, now: float) -> Limit:
    """The first state: measuring min_rtt at the low limit."""
    return Limit(limit=float(min(g.low, g.high)), min_rtt=None, epoch=0, samples=(), calibrate_at=now)


def allowed(s: Limit) -> int:
    """How many requests may be in flight now."""
    return max(1, math.floor(s.limit))


def median(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def next_limit(g: Gradient, limit: float, min_rtt: float, window_rtt: float) -> float:
    """The limit after a window whose median round trip was `window_rtt`."""
    target = min_rtt * (1 + g.tolerance)
    if window_rtt <= target:
        limit += 1
    else:
        limit *= max(0.5, target / window_rtt)
    return min(float(g.high), max(float(g.low), limit))


def remembered(g: Gradient, calibrations: tuple[tuple[float, float], ...],
               now: float) -> tuple[tuple[float, float], ...]:
    """The calibrations that still count at `now` (the latest always does)."""
    return tuple(c for c in calibrations[:-1] if now - c[0] <= g.memory_seconds) + calibrations[-1:]


def window_size(s: Limit) -> int:
    return max(MIN_WINDOW, allowed(s))


def observe(g: Gradient, s: Limit, rtt: float, epoch: int, now: float) -> Limit:
    """One request sent during calibration `epoch` was answered `rtt` seconds after it went,
    at `now`: the state after it (the limit changes when a calibration or a window is full)."""
    if epoch != s.epoch or not math.isfinite(rtt) or rtt < 0:
        return s
    samples = (*s.samples, rtt)
    if s.min_rtt is None:
        if len(samples) < CALIBRATION_SAMPLES:
            return replace(s, samples=samples)
        calibrations = remembered(g, (*s.calibrations, (now, median(samples))), now)
        return replace(s, min_rtt=min(rtt for _, rtt in calibrations), samples=(), calibrations=calibrations,
                       calibrate_at=now + g.recalibrate_seconds)
    if len(samples) < window_size(s):
        return replace(s, samples=samples)
    if now >= s.calibrate_at:
        return replace(s, limit=float(min(g.low, g.high)), min_rtt=None, epoch=s.epoch + 1, samples=())
    return replace(s, limit=next_limit(g, s.limit, s.min_rtt, median(samples)), samples=())
