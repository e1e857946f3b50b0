"""necrocode.gctuning: the operator freezes what it imported and spaces its garbage collections
out, so a full collection does not stop its event loop for hundreds of milliseconds in the
middle of a big cancellation; every collection's pause is reported (necrocode_gc_pause_seconds)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from necrocode import gctuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    callbacks = list(gc.callbacks)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        gc.callbacks[:] = callbacks


def test_tune_freezes_what_exists_and_collects_the_young_less_often(restored_gc: None) -> None:
    kept = [object() for _ in range(3)] + [{"a": 1}]  # a container: the collector tracks it
    gctuning.tune()
    assert gc.get_freeze_count() > 0
    assert kept[-1] not in gc.get_objects()  # frozen: no collection walks it again
    assert gc.get_threshold()[0] == gctuning.YOUNG > 700


def test_watch_reports_every_collections_pause_by_generation(restored_gc: None) -> None:
    seen: list[tuple[int, float]] = []
    callback = gctuning.watch(lambda generation, seconds: seen.append((generation, seconds)))
    gc.collect(2)
    gc.collect(0)
    gc.callbacks.remove(callback)
    gc.collect(2)  # no longer reported
    assert [g for g, _ in seen] == [2, 0]
    assert all(0 <= s < 5 for _, s in seen)
