"""A bounded wait of a cancellation (mode Drain's window, the cooperative stop window): how long
it may still wait, or why it is over. One rule for both, so both end the same way."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

Done = TypeVar("Done", bound=str)
WINDOW_END_WORDS = {"Deadline": "the deadline passed", "Forced": "the cancellation was forced"}
"""How a bounded wait ended, in a status message's words (besides its own `done`)."""


def window_wait(now: datetime, deadline: datetime, waiting: bool, forced: bool,
                done: Done) -> float | Done | Literal["Deadline", "Forced"]:
    """Seconds the window may still wait (> 0), or why it is over: the cancellation was forced
    (stop now, whatever else), nothing is left to wait for (`done`, even at the deadline), or
    the deadline passed (exactly at it included)."""
    if forced:
        return "Forced"
    if not waiting:
        return done
    left = (deadline - now).total_seconds()
    return left if left > 0 else "Deadline"
