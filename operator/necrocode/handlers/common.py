"""What both kinds' handlers share: the daemon body, the escalation by spec.force, the filters."""

from __future__ import annotations

from typing import Any

import kopf

from necrocode.handlers.lifecycle import service_of
from necrocode.model import TERMINAL_PHASES


def not_finished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in {p.value for p in TERMINAL_PHASES}


def finished(status: kopf.Status, **_: Any) -> bool:
    return not not_finished(status)


def spec_unobserved(meta: kopf.Meta, status: kopf.Status, **_: Any) -> bool:
    """The spec changed since the status was written (spec.force turned on: an escalation)."""
    seen = status.get("observedGeneration")
    return isinstance(seen, int) and int(meta.get("generation") or 0) > seen


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": body.get("apiVersion"), "kind": body["kind"], "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


async def run_cancellation(memo: kopf.Memo, body: kopf.Body) -> None:
    """Run the cancellation to its end. kopf cancels this daemon's task on operator shutdown
    and on the record's deletion (the daemons' cancellation_timeout, with no backoff: at once);
    the next start of the operator resumes from the stored status."""
    # the daemon's body is kopf's live view: read when the run begins (and registers itself, with
    # no await in between), so a change of spec.force is either in it or reaches the run itself
    await service_of(memo).run(_plain(body))


async def observe_spec(memo: kopf.Memo, body: kopf.Body) -> None:
    await service_of(memo).observe_spec(_plain(body))
