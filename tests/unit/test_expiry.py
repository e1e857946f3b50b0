"""A finished record's pending TTL deletion holds what the deletion needs, nothing more
(handlers/expiry.py): it waits as long as the TTL (7 days in the chart), once per record kept."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from types import SimpleNamespace
from typing import Any, cast

import kopf

from necrocode.handlers.expiry import schedule_expiry
from necrocode.model import iso, now_utc

CAUSE: contextvars.ContextVar[object] = contextvars.ContextVar("cause")
"""Stands for kopf's cause_var: set by kopf around every handler, holding the event's whole body."""


class Body:
    """Something as large as a record's body, whose life a weak reference can follow."""


async def test_a_pending_ttl_deletion_keeps_nothing_of_the_event_that_arranged_it() -> None:
    memo = kopf.Memo(expiries={}, service=SimpleNamespace(settings=SimpleNamespace(default_ttl_seconds=3600),
                                                          kube=None))
    record: dict[str, Any] = {
        "kind": "JobCancellation", "spec": {},
        "metadata": {"name": "stop-j1", "namespace": "ns", "uid": "u1", "managedFields": [{"manager": "x"}]},
        "status": {"phase": "Completed", "completedAt": iso(now_utc())}}
    body = Body()
    alive = weakref.ref(body)
    token = CAUSE.set(body)  # as kopf does around the handler that schedules the deletion
    schedule_expiry(memo, cast(kopf.RawEvent, {"type": "MODIFIED", "object": record}), cast(kopf.Body, record))
    CAUSE.reset(token)
    del body
    gc.collect()
    _due, task = memo.expiries["u1"]
    await asyncio.sleep(0)  # the task starts, and waits
    try:
        assert not task.done()  # still waiting for its TTL (an hour)
        assert alive() is None  # and the event's state went with the event
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
