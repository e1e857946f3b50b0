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


# kopf cancels the task at once when the operator stops or the record goes (no cancellation_backoff)
# and waits up to 10 s for it to end; the next start resumes from the stored status
@kopf.daemon(GROUP, VERSION, "taskcancellations", when=not_finished, cancellation_timeout=10,
             backoff=5)
async def task_cancellation(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await run_cancellation(memo, body)


@kopf.on.event(GROUP, VERSION, "taskcancellations", when=spec_unobserved)
async def task_cancellation_spec(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await observe_spec(memo, body)
