"""When the terminator deletes, forces, calls a runner stuck and wakes up (policies.termination):
table tests over plain pods and a ManualClock, boundaries included (exactly at a deadline, one
tick before). The cluster tests (test_jobcancellation, test_reliability, test_crash_recovery)
prove the terminator carries these decisions out against a real API server."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from necrocode.clock import ManualClock
from necrocode.kube import Kube
from necrocode.logs import Bound
from necrocode.model import Ref, iso
from necrocode.policies.termination import (
    CEILING,
    FINISHED_REUSE,
    Schedule,
    Termination,
    Wake,
    count_away,
    delete_needed,
    finished_list_fresh,
    repair_grace,
)
from necrocode.terminator import RunnerTerminator

T0 = datetime(2026, 12, 2, 4, 0, 0, tzinfo=UTC)
TICK = 0.001
GRACE, ESCALATE, STUCK = 30, 10, 20.0


def pod(name: str = "r", grace_end: float | None = None, deletion_grace: int | None = None) -> dict[str, Any]:
    """A runner; with `grace_end` (seconds after T0) deleted, its grace ending then (with
    `deletion_grace`, the deletionGracePeriodSeconds the API server stamped)."""
    meta: dict[str, Any] = {"name": name}
    if grace_end is not None:
        meta["deletionTimestamp"] = iso(T0 + timedelta(seconds=grace_end))
    if deletion_grace is not None:
        meta["deletionGracePeriodSeconds"] = deletion_grace
    return {"metadata": meta}


def at(seconds: float) -> ManualClock:
    clock = ManualClock(T0)
    clock.advance(seconds)
    return clock


def schedule(*pods: dict[str, Any], undeleted_deadline: float = math.inf) -> Schedule:
    s = Schedule(ESCALATE, STUCK)
    for p in pods:
        s[p["metadata"]["name"]] = p
    s.undeleted_deadline = undeleted_deadline
    return s


# ----------------------------------------------------------------------------- forcing
# "a" was deleted with 30 s of grace at T0 (forced at T0+40); "b" was never deleted (forced once
# the undeleted deadline, 45 s on the monotonic clock, has passed)
@pytest.mark.parametrize(("seconds", "forced", "escalated", "due"), [
    (0, set(), False, []),
    (40 - TICK, set(), False, []),                 # one tick before a's deadline
    (40, set(), False, ["a"]),                     # exactly at it
    (45 - TICK, set(), False, ["a"]),
    (45, set(), False, ["a", "b"]),                # exactly at the undeleted deadline
    (45, {"a"}, False, ["b"]),                     # forced already: never twice
    (45, {"a", "b"}, False, []),
    (0, set(), True, ["a", "b"]),                  # escalated: everything, whatever the grace
    (0, {"b"}, True, ["a"]),
])
def test_a_runner_is_forced_when_its_grace_and_escalation_ran_out(seconds: float, forced: set[str], escalated: bool,
                                                                  due: list[str]) -> None:
    clock = at(seconds)
    s = schedule(pod("a", grace_end=GRACE), pod("b"), undeleted_deadline=45)
    assert s.due(clock.now(), clock.monotonic(), forced, escalated) == due


def test_a_runner_is_due_once_per_pod_version() -> None:
    clock = at(40)
    s = schedule(pod("a", grace_end=GRACE))
    assert s.due(clock.now(), clock.monotonic(), set(), False) == ["a"]
    assert s.due(clock.now(), clock.monotonic(), set(), False) == []  # returned once
    s["a"] = pod("a", grace_end=GRACE + 20)  # a newer version of the pod, deleted later
    assert s.due(clock.now(), clock.monotonic(), set(), False) == []  # the old deadline is stale
    clock.advance(20)
    assert s.due(clock.now(), clock.monotonic(), set(), False) == ["a"]


def test_a_runner_that_went_is_never_due() -> None:
    clock = at(100)
    s = schedule(pod("a", grace_end=GRACE), pod("b"), undeleted_deadline=0)
    del s["a"], s["b"]
    assert s.due(clock.now(), clock.monotonic(), set(), False) == []
    assert s.due(clock.now(), clock.monotonic(), set(), True) == []


# ----------------------------------------------------------------------------- stuck
@pytest.mark.parametrize(("seconds", "stuck"), [
    (10 + STUCK - TICK, []),   # one tick before its stuck timeout
    (10 + STUCK, ["a"]),       # exactly at it
    (1000, ["a"]),
])
def test_a_forced_runner_still_there_after_the_stuck_timeout_is_checked(seconds: float, stuck: list[str]) -> None:
    s = schedule(pod("a", grace_end=0), pod("b", grace_end=0))
    s.mark_forced("a", 10.0)
    s.mark_forced("gone", 0.0)  # "gone" is no longer in the schedule
    assert s.stuck(at(seconds).monotonic()) == stuck


# ----------------------------------------------------------------------------- waking up
@pytest.mark.parametrize(("seconds", "pods", "undeleted_deadline", "forced_at", "wake"), [
    (0, [], math.inf, {}, Wake(CEILING, resync=True)),                              # nothing due: look again
    (0, [pod("a", GRACE)], math.inf, {}, Wake(CEILING, resync=True)),               # due after the ceiling
    (37, [pod("a", GRACE)], math.inf, {}, Wake(3.0, resync=False)),                 # a's escalation first
    (40, [pod("a", GRACE)], math.inf, {}, Wake(0.01, resync=False)),                # due now: never a busy loop
    (33, [pod("a", GRACE), pod("b")], 35, {}, Wake(2.0, resync=True)),              # b: deletes to try again
    (38, [pod("a", 0)], math.inf, {"a": 20.0}, Wake(2.0, resync=False)),           # a's stuck timeout
    (38, [pod("a", 0)], math.inf, {"a": 20.0, "gone": 0.0}, Wake(2.0, resync=False)),
])
def test_the_terminator_wakes_for_the_nearest_deadline(seconds: float, pods: list[dict[str, Any]],
                                                       undeleted_deadline: float, forced_at: dict[str, float],
                                                       wake: Wake) -> None:
    clock = at(seconds)
    s = schedule(*pods, undeleted_deadline=undeleted_deadline)
    for name, t in forced_at.items():
        s.mark_forced(name, t)
    forced = set(forced_at)
    assert s.wake(clock.now(), clock.monotonic(), forced) == wake


# ----------------------------------------------------------------------------- deleting
@pytest.mark.parametrize(("grace_end", "grace", "needed"), [
    (None, 30, True),     # never deleted
    (10, 30, False),      # deleting with less grace left than ours: a delete would add none
    (30, 30, False),      # exactly ours
    (31, 30, True),       # one second more than ours: ours shortens it
    (1, 0, True),         # a force delete shortens any grace
    (-5, 0, False),       # its grace ran out already
])
def test_a_runner_is_deleted_unless_it_has_no_more_grace_than_ours(grace_end: float | None, grace: int,
                                                                    needed: bool) -> None:
    assert delete_needed(pod(grace_end=grace_end), grace, T0) is needed


@pytest.mark.parametrize(("grace_end", "deletion_grace", "seconds", "grace", "repair"), [
    (None, None, 0, GRACE, GRACE),          # never deleted: deleted with the request's grace
    (None, None, 0, 0, 0),                  # ... a forced request's: none
    (GRACE, GRACE, 0, GRACE, None),         # inside its grace: left alone
    (GRACE, GRACE, 40 - 1, GRACE, None),    # one second before grace + escalation ran out
    (GRACE, GRACE, 40, GRACE, 0),           # exactly then: forced
    (GRACE, GRACE, 400, GRACE, 0),
    (GRACE, None, 400, GRACE, 0),           # no deletionGracePeriodSeconds seen: forced as well
    (0, 0, 400, GRACE, None),               # force-deleted already (a finalizer holds it): nothing to add
    (0, 0, 400, 0, None),                   # ... whatever the request's grace
    (-30, 0, 0, 0, None),
])
def test_verify_repairs_a_runner_without_taking_grace_away(grace_end: float | None, deletion_grace: int | None,
                                                           seconds: float, grace: int, repair: int | None) -> None:
    runner = pod(grace_end=grace_end, deletion_grace=deletion_grace)
    assert repair_grace(runner, ESCALATE, grace, at(seconds).now()) == repair


# ----------------------------------------------------------------------------- resuming
@pytest.mark.parametrize(("total", "gone", "present", "forced_only", "want_total", "away", "away_forced"), [
    (0, set(), 3, False, 3, 0, 0),            # new: the runners present now
    (5, set(), 3, False, 5, 2, 0),            # resumed: 2 went while no operator watched
    (5, set(), 3, True, 5, 2, 2),             # ... a forced request deletes with grace 0 only
    (5, {"x", "y"}, 3, False, 5, 0, 0),       # 2 counted gone before the restart, 3 left: none away
    (5, {"x"}, 1, False, 5, 3, 0),
    (3, {"x"}, 4, False, 5, 0, 0),            # more present than recorded (a late runner): the total grows
])
def test_runners_that_went_while_no_operator_watched_are_counted_once(
        total: int, gone: set[str], present: int, forced_only: bool, want_total: int, away: int,
        away_forced: int) -> None:
    state = Termination(total=total, gone=set(gone))
    count_away(state, present, forced_only)
    assert state.total == want_total
    assert len(state.gone - gone) == away
    assert len(state.forced) == away_forced
    assert state.terminated + present >= state.total  # every runner of the total is accounted for


# ----------------------------------------------------------------------------- what the schedule keeps
# (kept as runners change, not scanned for at every watch event: these are its transitions)
def test_a_runner_once_deleted_no_longer_awaits_its_delete() -> None:
    clock = at(37)
    s = schedule(pod("a", GRACE), pod("b"), undeleted_deadline=39)
    assert s.awaits_delete("b", set()) and s.undeleted(set()) == ["b"]
    assert s.wake(clock.now(), clock.monotonic(), set()) == Wake(2.0, resync=True)  # b's delete, tried again
    s["b"] = pod("b", grace_end=GRACE)  # its delete went through: the watch saw its deletionTimestamp
    assert not s.awaits_delete("b", set()) and s.undeleted(set()) == []
    assert s.wake(clock.now(), clock.monotonic(), set()) == Wake(3.0, resync=False)  # a's and b's escalation
    clock.advance(3)
    assert s.due(clock.now(), clock.monotonic(), set(), False) == ["a", "b"]  # not as undeleted: by their clock


def test_a_runner_that_left_is_forgotten_by_the_stuck_check_and_the_wake_up() -> None:
    clock = at(38)
    s = schedule(pod("a", 0), pod("b", 0))
    s.mark_forced("a", 20.0)
    s.mark_forced("b", 22.0)
    assert s.wake(clock.now(), clock.monotonic(), {"a", "b"}) == Wake(2.0, resync=False)
    s.pop("a")
    assert s.wake(clock.now(), clock.monotonic(), {"a", "b"}) == Wake(4.0, resync=False)  # b's stuck timeout
    assert s.stuck(clock.monotonic() + 5) == ["b"]
    del s["b"]
    assert s.stuck(clock.monotonic() + 5) == [] and s.forced_at == {}
    assert s.wake(clock.now(), clock.monotonic(), {"a", "b"}) == Wake(CEILING, resync=True)


def test_a_runner_forced_again_counts_its_stuck_timeout_from_the_last_force() -> None:
    clock = at(38)
    s = schedule(pod("a", 0))
    s.mark_forced("a", 10.0)
    s.mark_forced("a", 21.0)  # let go first, then forced: the timeout runs from the force
    assert s.stuck(clock.monotonic()) == []
    assert s.wake(clock.now(), clock.monotonic(), {"a"}) == Wake(3.0, resync=False)
    assert s.stuck(41.0) == ["a"]


def test_the_kept_bookkeeping_answers_as_a_scan_of_every_runner_would() -> None:
    """Random turns (pods deleted, gone, forced; time passing), seeded: after each, the schedule's
    answers equal those of a scan of every runner, which is what it kept them to avoid."""
    rng = random.Random(19)
    for _ in range(300):
        s = schedule(*(pod(f"r{i}", None if rng.random() < 0.5 else rng.randint(0, 60)) for i in range(8)),
                     undeleted_deadline=rng.choice([math.inf, rng.uniform(0, 80)]))
        forced_at: dict[str, float] = {}
        forced: set[str] = set()
        mono = 0.0
        for _turn in range(30):
            mono += rng.uniform(0, 5)
            here = sorted(s)
            action = rng.random()
            if here and action < 0.25:
                name = rng.choice(here)
                s[name] = pod(name, grace_end=rng.randint(0, 80))
            elif here and action < 0.4:
                s.pop(rng.choice(here))
            elif here and action < 0.55:
                name = rng.choice(here)
                s.mark_forced(name, mono)
                forced_at[name] = mono
                if rng.random() < 0.7:
                    forced.add(name)
            undeleted = [n for n in s if "deletionTimestamp" not in s[n]["metadata"] and n not in forced]
            assert s.undeleted(forced) == undeleted
            assert all(s.awaits_delete(n, forced) == (n in undeleted) for n in s)
            assert s.stuck(mono) == [n for n, t in forced_at.items() if n in s and mono - t >= STUCK]
            stuck_waits = [STUCK - (mono - t) for n, t in forced_at.items() if n in s]
            wake = s.wake(T0 + timedelta(seconds=mono), mono, forced)
            assert wake.resync == (bool(undeleted) or wake.seconds >= CEILING)
            assert wake.seconds <= max(0.01, min([CEILING, *(max(0.0, w) for w in stuck_waits)]))


# ----------------------------------------------------------------------------- finished tasks before forcing
@pytest.mark.parametrize(("listed_at", "mono", "fresh"), [
    (None, 0.0, False),                            # never listed: list
    (10.0, 10.0, True),                            # the same round
    (10.0, 10.0 + FINISHED_REUSE - TICK, True),    # a round just inside the window
    (10.0, 10.0 + FINISHED_REUSE, False),          # at its end: listed again
    (10.0, 60.0, False),
    (10.0, 9.0, False),                            # a clock that went back: listed again
])
def test_one_list_of_finished_tasks_answers_the_forcing_rounds_of_a_short_window(
        listed_at: float | None, mono: float, fresh: bool) -> None:
    assert finished_list_fresh(listed_at, mono) is fresh


def test_the_terminator_lists_finished_tasks_once_per_window_of_forcing_rounds() -> None:
    """Rounds of forcing within FINISHED_REUSE of a list use it; the first after asks again;
    a task listed as finished lets its runner go, one that finished after the list does not."""
    clock = ManualClock(T0)
    lists: list[float] = []
    finished = {"t-a"}

    async def finished_tasks() -> frozenset[str]:
        lists.append(clock.monotonic())
        return frozenset(finished)

    term = RunnerTerminator(cast(Kube, None), "ns", "necrocode.io/job=j", grace=GRACE, escalate_after=ESCALATE,
                            stuck_timeout=STUCK, concurrency=1, clock=clock, log=Bound(),
                            on_progress=lambda t: None, on_forced=_nothing, adopt_new=False,
                            owner=Ref("JobCancellation", "c", "uid"), finished_tasks=finished_tasks)
    runners = {n: {"metadata": {"name": n, "labels": {"necrocode.io/task": t}}}
               for n, t in (("ra", "t-a"), ("rb", "t-b"), ("rc", "t-c"))}
    remaining, state = schedule(*runners.values()), Termination()

    async def rounds() -> list[list[str]]:
        out = [await term._spare_finished(["ra"], remaining, state)]
        finished.add("t-b")  # finished after the list: its runner is forced within the window
        clock.advance(FINISHED_REUSE - TICK)
        out.append(await term._spare_finished(["rb"], remaining, state))
        clock.advance(TICK)
        out.append(await term._spare_finished(["rc"], remaining, state))
        return out

    assert asyncio.run(rounds()) == [[], ["rb"], ["rc"]]
    assert lists == [0.0, FINISHED_REUSE], lists
    assert state.let_go == {"ra"}


async def _nothing(name: str) -> None:
    return None
