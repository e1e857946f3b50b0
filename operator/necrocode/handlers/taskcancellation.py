"""TaskCancellation handlers (the same engine as JobCancellation, with the task steps)."""

from __future__ import annotations

from typing import Any

import kopf

from necrocode.handlers.common import expire, not_finished, run_cancellation, ttl_set_and_finished
from necrocode.model import GROUP, VERSION


@kopf.daemon(GROUP, VERSION, "taskcancellations", when=not_finished, cancellation_timeout=10,
             backoff=5)
async def task_cancellation(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await run_cancellation(body, stopped)


@kopf.timer(GROUP, VERSION, "taskcancellations", when=ttl_set_and_finished, interval=5, idle=1)
async def task_cancellation_ttl(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, **_: Any) -> None:
    await expire(body, spec, status)
