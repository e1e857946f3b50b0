"""JobCancellation handlers."""

from __future__ import annotations

from typing import Any

import kopf

from necrocode.handlers.common import expire, not_finished, run_cancellation, ttl_set_and_finished
from necrocode.model import GROUP, VERSION


@kopf.daemon(GROUP, VERSION, "jobcancellations", when=not_finished, cancellation_timeout=10,
             backoff=5)
async def job_cancellation(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await run_cancellation(body, stopped)


@kopf.timer(GROUP, VERSION, "jobcancellations", when=ttl_set_and_finished, interval=5, idle=1)
async def job_cancellation_ttl(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, **_: Any) -> None:
    await expire(body, spec, status)
