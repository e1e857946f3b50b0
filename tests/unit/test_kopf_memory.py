"""kopf's memory of each object, kept only while kopf has work for it (necrocode.kopfmemory)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any

import pytest
from kopf._core.engines import daemons
from kopf._core.reactor import inventory, processing

from necrocode import kopfmemory
from necrocode.kopfmemory import LeanMemories, finished, strip


def record(uid: str, phase: str | None = None, **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "JobCancellation",
                            "metadata": {"uid": uid, "name": uid, "namespace": "ns", **meta}, "spec": {"jobRef": "j"}}
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def run_daemon(memory: inventory.ResourceMemory) -> None:
    """What kopf's spawning does for a running daemon: an entry in running_daemons."""
    memory.daemons_memory.running_daemons["job_cancellation"] = object()  # type: ignore[assignment]


@pytest.mark.parametrize(("status", "expected"), [
    ({"phase": "Completed"}, True), ({"phase": "PartiallyCompleted"}, True), ({"phase": "Failed"}, True),
    ({"phase": "Rejected"}, True), ({"phase": "Running"}, False), ({"phase": "Pending"}, False), ({}, False),
    ({"phase": ["Completed"]}, False), ({"phase": {"a": 1}}, False), ({"phase": 3}, False),
    ("Completed", False), (None, False), (["Completed"], False),
])
def test_only_a_terminal_phase_string_is_finished(status: Any, expected: bool) -> None:
    assert finished({"status": status}) is expected


def test_managed_fields_are_dropped_in_place_and_odd_bodies_are_left() -> None:
    body = record("u1", managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}], labels={"a": "b"})
    strip(body)
    assert body["metadata"] == {"uid": "u1", "name": "u1", "namespace": "ns", "labels": {"a": "b"}}
    for odd in ({}, {"metadata": None}, {"metadata": "x"}, {"metadata": ["managedFields"]}, "text", None):
        strip(odd)  # nothing to drop, nothing raised


async def test_a_running_record_is_remembered_and_its_memory_goes_when_it_finishes() -> None:
    memories = LeanMemories()
    running = await memories.recall(record("u1", "Running", managedFields=[{"manager": "m"}]))
    assert memories.kept() == 1
    assert await memories.recall(record("u1", "Running")) is running  # the same memory, event after event
    done = record("u1", "Completed")
    assert await memories.recall(done) is running  # this event is processed with it, then it is gone
    assert memories.kept() == 0


async def test_a_finished_record_never_seen_running_gets_a_memory_per_event_and_none_is_kept() -> None:
    memories = LeanMemories()
    first = await memories.recall(record("u1", "Failed"))
    second = await memories.recall(record("u1", "Failed"))
    assert first is not second
    assert memories.kept() == 0


async def test_a_memory_with_a_running_daemon_is_kept_until_the_daemon_has_gone() -> None:
    memories = LeanMemories()
    memory = await memories.recall(record("u1", "Running"))
    run_daemon(memory)
    assert await memories.recall(record("u1", "Completed")) is memory
    assert memories.kept() == 1  # kopf still has to stop it, or see it return
    memory.daemons_memory.running_daemons.clear()  # what kopf's daemon runner does when it ends
    await memories.recall(record("u2", "Running"))  # any object's next event sweeps
    assert memories.kept() == 1 and await memories.recall(record("u2", "Running")) is not memory


async def test_the_sweep_runs_without_further_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopfmemory, "SWEEP_SECONDS", 0.01)
    memories = LeanMemories()
    memory = await memories.recall(record("u1", "Running"))
    run_daemon(memory)
    await memories.recall(record("u1", "Completed"))
    await asyncio.sleep(0.05)
    assert memories.kept() == 1  # the daemon still runs: kept, and looked at again later
    memory.daemons_memory.running_daemons.clear()
    for _ in range(1000):  # up to 10 s on a slow machine; normally the next sweep
        if not memories.kept():
            break
        await asyncio.sleep(0.01)
    assert memories.kept() == 0


async def test_a_record_that_is_unfinished_again_is_remembered_again() -> None:
    memories = LeanMemories()
    memory = await memories.recall(record("u1", "Running"))
    run_daemon(memory)
    await memories.recall(record("u1", "Completed"))
    assert await memories.recall(record("u1", "Running")) is memory  # no longer waiting to be dropped
    memory.daemons_memory.running_daemons.clear()
    memories.sweep()
    assert memories.kept() == 1


async def test_forget_on_deletion_still_works() -> None:
    memories = LeanMemories()
    await memories.recall(record("u1", "Running"))
    await memories.forget(record("u1", "Running"))
    assert memories.kept() == 0


def test_kopf_still_calls_the_methods_overridden_here() -> None:
    """kopf's ResourceMemories is not documented API: if an upgrade renames or reshapes what
    kopf's processing calls, this fails instead of the operator keeping every memory again."""
    ours = inspect.signature(LeanMemories.recall).parameters
    theirs = inspect.signature(inventory.ResourceMemories.recall).parameters
    assert list(ours) == list(theirs)
    assert all(ours[n].kind == theirs[n].kind and ours[n].default == theirs[n].default for n in ours)
    source = inspect.getsource(processing.process_resource_event)
    assert "memories.recall(" in source and "memories.forget(" in source
    assert "running_daemons" in {f.name for f in dataclasses.fields(daemons.DaemonsMemory)}
    assert "daemons_memory" in {f.name for f in dataclasses.fields(inventory.ResourceMemory)}
    assert isinstance(LeanMemories()._items, dict)
