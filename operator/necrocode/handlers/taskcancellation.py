"""TaskCancellation handlers (the same engine as JobCancellation, with the task steps)."""

from __future__ import annotations

from typing import Any

import kopf

from necrocode.handlers.common import (
    not_finished,
    observe_spec,
    run_cancellation,
    spec_unobserved,
)
from necrocode.model import GROUP, VERSION


@kopf.daemon(GROUP, VERSION, "taskcancellations", when=not_finished, cancellation_timeout=10,
             backoff=5)
async def task_cancellation(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await run_cancellation(body, stopped)


@kopf.on.event(GROUP, VERSION, "taskcancellations", when=spec_unobserved)
async def task_cancellation_spec(body: kopf.Body, **_: Any) -> None:
    await observe_spec(body)
