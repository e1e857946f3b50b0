"""The cooperative stop window's pure rules (issue 18, item 2): which signalled runners ended by
themselves, and when the window is over. cooperation.CooperativeWindow feeds them what the API
says; steps.cooperative_step records the window (status.cooperative) and the outcomes.

A runner "ends by itself" when its pod's phase is Succeeded or Failed (every container exited:
the runner saved its work and stopped, whatever its exit code) or when its pod is gone (something
other than this cancellation deleted it). A pod only being deleted is not an end: the kubelet
still runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from necrocode.policies.window import window_wait

Pod = dict[str, Any]
ENDED_PHASES = frozenset({"Succeeded", "Failed"})
CooperativeEnd = Literal["AllEnded", "Deadline", "Forced"]
ALL_ENDED: Literal["AllEnded"] = "AllEnded"


def runner_ended(pod: Pod | None) -> bool:
    """The runner's containers all exited (or its pod is gone: None)."""
    return pod is None or str((pod.get("status") or {}).get("phase") or "") in ENDED_PHASES


@dataclass(frozen=True)
class CooperativeTally:
    ended: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()


def cooperative_tally(signalled: Iterable[str], pods: Mapping[str, Pod]) -> CooperativeTally:
    """Of the runners the window waits for (`signalled`, by name), which have ended by themselves
    and which still run, given the runner pods present now (by name)."""
    ended: list[str] = []
    waiting: list[str] = []
    for name in sorted(set(signalled)):
        (ended if runner_ended(pods.get(name)) else waiting).append(name)
    return CooperativeTally(tuple(ended), tuple(waiting))


def window_deadline(started: datetime, seconds: int) -> datetime:
    return started + timedelta(seconds=seconds)


def cooperative_wait(now: datetime, deadline: datetime, tally: CooperativeTally,
                     forced: bool) -> float | CooperativeEnd:
    """How long the window may still wait (seconds, > 0), or why it is over: the cancellation was
    forced (stop now), every runner ended by itself, or the deadline passed."""
    return window_wait(now, deadline, bool(tally.waiting), forced, ALL_ENDED)


def outcome_of(name: str, *, forced: bool, let_go: bool, cooperative: bool) -> str:
    """A runner's outcome once it is gone: forced wins (it was force-deleted); a runner let go
    because its task finished is TaskFinished; one that ended inside the window Cooperative;
    any other Terminated (deleted with its grace)."""
    if forced:
        return "Forced"
    if let_go:
        return "TaskFinished"
    return "Cooperative" if cooperative else "Terminated"
