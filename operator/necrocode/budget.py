"""The operator's API budget: requests in flight and requests per second, for the whole process
(one Budget in each Kube client) and for each cancellation (one Budget per run, found through
the context variable CURRENT, so no executor has to pass it along).

Why a context variable: a cancellation's requests are made deep in its steps, by executors
that know nothing of budgets; asyncio copies the context into every task created inside the
run, so the Budget set when the engine starts a cancellation is the one its pod deletes, task
updates, Events and watches see. Requests made outside any cancellation (the leader elector's,
the REST API's, kopf's own) have none and pass only their client's global budget.

The rate decisions are pure (necrocode.policies.budget), and so are those of an in-flight
limit that adapts to the API server's latency (necrocode.policies.adaptive); this module waits on
the event loop's clock for what they decide.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import ClassVar

from necrocode.policies import adaptive
from necrocode.policies.budget import Bucket, default_burst, full, take


class Slots:
    """In-flight slots whose number may change while requests wait for them (an
    asyncio.Semaphore's cannot): first come, first served; a raised limit lets waiters in at
    once, a lowered one lets none in until enough are given back. Bound to one event loop."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self.used >= self.limit or bool(self._waiters)

    async def acquire(self) -> None:
        if not self.locked():
            self.used += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the one who let us in counted our slot
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # let in, then cancelled before it could use the slot
            else:
                if fut in self._waiters:  # a release meanwhile may have passed over it already
                    self._waiters.remove(fut)
                self._wake()
            raise

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(None)


class Budget:
    """At most `concurrency` requests in flight (0: no limit of its own) and at most `qps`
    requests sent per second with bursts of `burst` (qps 0: no rate limit; burst 0: one
    second's worth). `scope` names it in necrocode_api_budget_wait_seconds_total. With a
    `gradient`, the in-flight limit follows the round trips given to observe(), between the
    gradient's low and `concurrency` (policies.adaptive)."""

    on_wait: ClassVar[Callable[[str, float], None] | None] = None
    """Called with (scope, seconds) each time a request waited for a budget (the operator adds
    them to necrocode_api_budget_wait_seconds_total; set at startup, as this module may not
    import metrics)."""

    on_limit: ClassVar[Callable[[str, int], None] | None] = None
    """Called with (scope, limit) each time an adaptive in-flight limit changes (the operator
    shows it as necrocode_api_concurrency_limit)."""

    on_min_rtt: ClassVar[Callable[[str, float], None] | None] = None
    """Called with (scope, seconds) each time the round trip an adaptive limit judges by changes
    (policies.adaptive: min_rtt; the operator shows it as necrocode_api_min_rtt_seconds)."""

    def __init__(self, scope: str, *, qps: float = 0.0, burst: int = 0, concurrency: int = 0,
                 gradient: adaptive.Gradient | None = None):
        self.scope = scope
        self.qps = qps
        self.burst = burst or default_burst(qps)
        self.concurrency = concurrency
        self.gradient = gradient if concurrency > 0 else None
        self._limit = adaptive.start(self.gradient, 0.0) if self.gradient is not None else None
        self._bucket: Bucket | None = None
        self._slots: tuple[asyncio.AbstractEventLoop, Slots] | None = None

    def __repr__(self) -> str:
        return (f"Budget({self.scope!r}, qps={self.qps}, burst={self.burst}, concurrency={self.concurrency}"
                f"{', adaptive' if self.gradient else ''})")

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (0: no limit)."""
        if self._limit is not None:
            return adaptive.allowed(self._limit)
        return self.concurrency

    @property
    def epoch(self) -> int:
        """The adaptive limit's calibration a request sent now belongs to (give it to observe())."""
        return self._limit.epoch if self._limit is not None else 0

    def observe(self, rtt: float, epoch: int) -> None:
        """A request sent in calibration `epoch` was answered after `rtt` seconds: an adaptive
        limit takes it into account (a fixed one ignores it)."""
        if self.gradient is None or self._limit is None:
            return
        now = asyncio.get_running_loop().time()
        before, min_rtt = self.limit, self._limit.min_rtt
        self._limit = adaptive.observe(self.gradient, self._limit, rtt, epoch, now)
        if self._limit.min_rtt is not None and self._limit.min_rtt != min_rtt and Budget.on_min_rtt is not None:
            Budget.on_min_rtt(self.scope, self._limit.min_rtt)
        if self.limit != before:
            if self._slots is not None:
                self._slots[1].resize(self.limit)
            if Budget.on_limit is not None:
                Budget.on_limit(self.scope, self.limit)

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> Slots:
        """The in-flight slots, one set per event loop (their waiters' futures belong to the
        loop; tests run clients on more than one)."""
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, Slots(self.limit))
        return self._slots[1]

    async def acquire(self, hold: bool = True) -> None:
        """Wait until one more request may be sent: an in-flight slot (when `hold`; a watch,
        long-lived, holds none) and a token of the rate. release() gives the slot back."""
        loop = asyncio.get_running_loop()
        waited = 0.0
        sem = self._semaphore(loop) if hold and self.concurrency > 0 else None
        if sem is not None:
            if sem.locked():
                start = loop.time()
                await sem.acquire()
                waited += loop.time() - start
            else:
                await sem.acquire()
        if self.qps > 0:
            now = loop.time()
            self._bucket, wait = take(self._bucket or full(self.qps, self.burst, now), now)
            if wait > 0:
                try:
                    await asyncio.sleep(wait)
                except BaseException:
                    if sem is not None:
                        sem.release()
                    raise
                waited += wait
        if waited > 0 and Budget.on_wait is not None:
            Budget.on_wait(self.scope, waited)

    def release(self) -> None:
        if self.concurrency > 0 and self._slots is not None:
            self._slots[1].release()


CURRENT: ContextVar[Budget | None] = ContextVar("necrocode_cancellation_budget", default=None)
"""The budget of the cancellation whose work runs in this context (None outside one)."""
