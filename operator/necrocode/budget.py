"""The operator's API budget: requests in flight and requests per second, for the whole process
(one Budget in each Kube client) and for each cancellation (one Budget per run, found through
the context variable CURRENT, so no executor has to pass it along).

Why a context variable: a cancellation's requests are made deep in its steps, by executors
that know nothing of budgets; asyncio copies the context into every task created inside the
run, so the Budget set when the engine starts a cancellation is the one its pod deletes, task
updates, Events and watches see. Requests made outside any cancellation (the leader elector's,
the REST API's, kopf's own) have none and pass only their client's global budget.

The rate decisions are pure (necrocode.policies.budget); this module waits on the event loop's
clock for what they decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import ClassVar

from necrocode.policies.budget import Bucket, default_burst, full, take


class Budget:
    """At most `concurrency` requests in flight (0: no limit of its own) and at most `qps`
    requests sent per second with bursts of `burst` (qps 0: no rate limit; burst 0: one
    second's worth). `scope` names it in necrocode_api_budget_wait_seconds_total."""

    on_wait: ClassVar[Callable[[str, float], None] | None] = None
    """Called with (scope, seconds) each time a request waited for a budget (the operator adds
    them to necrocode_api_budget_wait_seconds_total; set at startup, as this module may not
    import metrics)."""

    def __init__(self, scope: str, *, qps: float = 0.0, burst: int = 0, concurrency: int = 0):
        self.scope = scope
        self.qps = qps
        self.burst = burst or default_burst(qps)
        self.concurrency = concurrency
        self._bucket: Bucket | None = None
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def __repr__(self) -> str:
        return f"Budget({self.scope!r}, qps={self.qps}, burst={self.burst}, concurrency={self.concurrency})"

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        """The in-flight slots, one set per event loop (a semaphore belongs to the loop that
        first waits on it; tests run clients on more than one)."""
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.concurrency))
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
