"""The shared runner watch's bookkeeping (necrocode.runnerwatch): which selectors it shares, which
events each subscriber is handed, and when a subscriber must list again. The watch itself, on a
real API server, is in tests/cluster/test_runner_watch.py."""

from __future__ import annotations

from typing import Any, cast

import pytest

from necrocode.clock import SystemClock
from necrocode.kube import Kube
from necrocode.logs import Bound
from necrocode.runnerwatch import RECENT_EVENTS, RESYNC, NamespaceWatch, Subscription, equality_selector

JOB_A = {"necrocode.io/job": "a", "necrocode.io/role": "runner"}


def event(name: str, rv: int | str, job: str = "a", kind: str = "MODIFIED") -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {
        "name": name, "resourceVersion": str(rv), "managedFields": [{"manager": "kwok"}],
        "labels": {"necrocode.io/job": job, "necrocode.io/role": "runner"}}}}


def shared(since: str) -> NamespaceWatch:
    """Not started: only its bookkeeping is exercised here."""
    return NamespaceWatch(cast(Kube, None), "ns", since, SystemClock(), Bound(), on_idle=lambda w: None)


def drained(sub: Subscription) -> list[dict[str, Any]]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def names(evs: list[dict[str, Any]]) -> list[str]:
    return [e["object"]["metadata"]["name"] if "object" in e else e["type"] for e in evs]


@pytest.mark.parametrize(("selector", "labels"), [
    ("necrocode.io/job=a,necrocode.io/role=runner", JOB_A),
    (" necrocode.io/job = a ", {"necrocode.io/job": "a"}),
    ("necrocode.io/job==a", None),
    ("necrocode.io/job!=a", None),
    ("necrocode.io/job in (a,b)", None),
    ("necrocode.io/job", None),
    ("", None),
])
def test_only_equality_selectors_are_shared(selector: str, labels: dict[str, str] | None) -> None:
    assert equality_selector(selector) == labels


def test_a_subscriber_gets_its_own_runners_newer_than_its_list_only() -> None:
    w = shared("100")
    sub = Subscription(JOB_A, "100")
    w.add(sub)
    for ev in (event("a-1", 101), event("b-1", 102, job="b"), event("a-2", 99), event("a-3", 103, kind="DELETED")):
        w._keep(ev)
    got = drained(sub)
    assert names(got) == ["a-1", "a-3"]
    assert "managedFields" not in got[0]["object"]["metadata"]


def test_a_subscriber_of_every_job_is_handed_every_runner_and_leaving_forgets_it() -> None:
    w = shared("100")
    every, only_a = Subscription({"necrocode.io/role": "runner"}, "100"), Subscription(JOB_A, "100")
    w.add(every)
    w.add(only_a)
    w._keep(event("a-1", 101))
    w._keep(event("b-1", 102, job="b"))
    assert names(drained(every)) == ["a-1", "b-1"]
    assert names(drained(only_a)) == ["a-1"]
    w.remove(only_a)
    assert set(w.by_job) == {None}
    w._keep(event("a-2", 103))
    assert names(drained(only_a)) == [] and names(drained(every)) == ["a-2"]


def test_each_subscriber_gets_a_copy_it_may_change() -> None:
    w = shared("100")
    one, two = Subscription(JOB_A, "100"), Subscription(JOB_A, "100")
    w.add(one)
    w.add(two)
    w._keep(event("a-1", 101))
    mine = drained(one)[0]
    mine["object"]["metadata"]["name"] = "changed"
    assert names(drained(two)) == ["a-1"]
    assert names([w.recent[0][2]]) == ["a-1"]


def test_a_late_subscriber_is_handed_what_happened_since_its_list() -> None:
    w = shared("100")
    w.add(Subscription({"necrocode.io/job": "b", "necrocode.io/role": "runner"}, "100"))
    for rv in range(101, 106):
        w._keep(event(f"a-{rv}", rv))
    late = Subscription(JOB_A, "103")
    w.add(late)
    assert names(drained(late)) == ["a-104", "a-105"]
    w._keep(event("a-106", 106))
    assert names(drained(late)) == ["a-106"]


def test_a_subscriber_whose_list_is_older_than_the_shared_watch_lists_again() -> None:
    w = shared("100")
    old = Subscription(JOB_A, "90")
    w.add(old)
    assert drained(old) == [RESYNC]


def test_a_subscriber_whose_events_are_no_longer_kept_lists_again() -> None:
    w = shared("100")
    for rv in range(101, 101 + RECENT_EVENTS + 10):
        w._keep(event("x", rv, job="b"))
    assert w.covers_from == 110
    covered, lost = Subscription(JOB_A, "110"), Subscription(JOB_A, "109")
    w.add(covered)
    w.add(lost)
    assert drained(covered) == []
    assert drained(lost) == [RESYNC]


def test_after_a_restart_every_subscriber_lists_again_and_old_events_are_forgotten() -> None:
    w = shared("100")
    sub = Subscription(JOB_A, "100")
    w.add(sub)
    w._keep(event("a-1", 101))
    drained(sub)
    w._restart("500")
    assert drained(sub) == [RESYNC]
    assert not w.recent and w.covers_from == 500
    w.add(late := Subscription(JOB_A, "101"))
    assert drained(late) == [RESYNC]


def test_resource_versions_that_are_not_numbers_let_everything_through_and_always_relist() -> None:
    w = shared("abc")
    sub = Subscription(JOB_A, "abc")
    w.add(sub)
    w._keep(event("a-1", "xyz"))
    assert names(drained(sub)) == ["RESYNC", "a-1"]
