"""What giving a task a cancellation's state needs (planning.task_write): our record alone does
not make a task done when a late writer set it live again, and writing it again keeps what it
was before the cancellation (planning.recorded_previous_state)."""

from __future__ import annotations

from typing import Any

import pytest

from necrocode.model import JOB_CANCELLATION, TASK_CANCELLATION, Ref
from necrocode.planning import TaskWrite, recorded_previous_state, task_write

ME = Ref(JOB_CANCELLATION, "stop", "uid-1")
OTHER = Ref(JOB_CANCELLATION, "stop", "uid-0")  # the same name, an earlier request
TC = Ref(TASK_CANCELLATION, "tc", "uid-2")


def task(state: str | None, record: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    st: dict[str, Any] = dict(status)
    if state is not None:
        st["state"] = state
    if record is not None:
        st["cancellation"] = record
    return {"metadata": {"name": "job-a"}, "status": st}


def ours(prev: str = "Running", by: Ref = ME) -> dict[str, Any]:
    return {"cancelledBy": by.name, "cancelledByKind": by.kind, "cancelledByUid": by.uid, "previousState": prev}


@pytest.mark.parametrize("t, after, want", [
    # not ours yet: written unless finished or already there
    (task("Running"), "Cancelled", TaskWrite.WRITE),
    (task("Pending"), "Cancelled", TaskWrite.WRITE),
    (task(None), "Cancelled", TaskWrite.WRITE),
    (task("Done"), "Cancelled", TaskWrite.UNAFFECTED),
    (task("Failed"), "Cancelled", TaskWrite.UNAFFECTED),
    (task("Cancelled"), "Cancelled", TaskWrite.UNAFFECTED),  # another request's
    (task("Blocked"), "Blocked", TaskWrite.UNAFFECTED),
    (task("Blocked"), "Cancelled", TaskWrite.WRITE),
    # ours, and still as we left it
    (task("Cancelled", ours()), "Cancelled", TaskWrite.DONE),
    # ours, then finished by the runner's own late report: kept as it ended, still counted ours
    (task("Done", ours()), "Cancelled", TaskWrite.DONE),
    # ours, then set live again by a late writer: written again
    (task("Running", ours("Pending")), "Cancelled", TaskWrite.WRITE),
    (task("Ready", ours()), "Cancelled", TaskWrite.WRITE),
    (task("Pending", ours()), "Cancelled", TaskWrite.WRITE),
    # an earlier request of the same name is not us
    (task("Cancelled", ours(by=OTHER)), "Cancelled", TaskWrite.UNAFFECTED),
    (task("Running", ours(by=OTHER)), "Cancelled", TaskWrite.WRITE),
    # a block of ours, and a block undone
    (task("Blocked", blockedBy="tc", blockedByUid="uid-2"), "Blocked", TaskWrite.DONE),
    (task("Running", blockedBy="tc", blockedByUid="uid-2"), "Blocked", TaskWrite.WRITE),
])
def test_what_a_task_needs(t: dict[str, Any], after: str, want: TaskWrite) -> None:
    by = TC if after == "Blocked" else ME
    assert task_write(t, after, by) is want


@pytest.mark.parametrize("t, want", [
    (task("Running", ours("Pending")), "Pending"),
    (task("Cancelled", ours("Ready")), "Ready"),
    (task("Running", ours("Pending", by=OTHER)), None),  # not our record
    (task("Running"), None),
    (task("Running", ours("Sleeping")), None),  # not a state: the current one is used
    (task("Running", {**ours(), "previousState": 3}), None),
    (task("Running", "not a mapping"), None),  # type: ignore[arg-type]
])
def test_the_state_before_the_cancellation_is_taken_from_our_own_record(t: dict[str, Any], want: str | None) -> None:
    assert recorded_previous_state(t, ME) == want
