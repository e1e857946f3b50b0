"""What the engine does when a cancellation (re)starts: which steps it runs, keeps or skips, how
long it has left, and what its runners' counts start from. The status stored by the API server
is the durable record; after an operator restart the engine reads it back and these rules tell
what is still missing, so nothing is done or counted twice. service.CancellationService and the
steps carry them out.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import datetime

from necrocode.model import (
    DONE_STEP_STATES,
    CancellationSpec,
    CancellationStatus,
    Progress,
    RunnerOutcome,
    StepState,
    iso,
    parse_time,
)
from necrocode.policies.termination import Termination


# ----------------------------------------------------------------------------- steps
class StepAction(enum.Enum):
    KEEP = "keep"  # done (in this run or an earlier one): left as recorded
    SKIP = "skip"  # not needed (the request ended early), or after a failed critical step
    RUN = "run"    # pending, or running when the last operator stopped (steps are idempotent)


def step_action(state: StepState, *, stop: bool, failed_critical: bool) -> tuple[StepAction, str]:
    """What the engine does with a step in `state` now, and the message of a skip."""
    if state in DONE_STEP_STATES:
        return StepAction.KEEP, ""
    if stop:
        return StepAction.SKIP, "not needed"
    if failed_critical:
        return StepAction.SKIP, "skipped after a failed step"
    return StepAction.RUN, ""


# ----------------------------------------------------------------------------- bounds
def deferral_limit(stuck_timeout: float, escalate_after: int) -> float:
    """How long a JobCancellation waits for earlier TaskCancellations of its job still in flight
    (they stop their runners within their own escalation delay and stuck timeout), before it
    goes on without them."""
    return stuck_timeout + escalate_after + 30.0


def spec_windows(spec: CancellationSpec) -> float:
    """The waits a spec asks for on top of stopping runners (cancellation_bound's `windows`):
    mode Drain's deadline and the cooperative stop window; none when forced."""
    drain = (spec.drain_deadline_seconds or 0) if spec.mode == "Drain" and not spec.force else 0
    return float(drain + (0 if spec.force else spec.cooperative_seconds))


def cancellation_bound(grace: int, escalate_after: int, stuck_timeout: float, call_budget: float,
                       steps: int, is_job: bool, windows: float = 0.0) -> float:
    """The longest a cancellation may take, from its spec and the settings, whatever the API
    answers: the runners' grace, the escalation delay and the stuck timeout, the wait for earlier
    TaskCancellations (a JobCancellation), and one call's full retry budget for each step (the
    steps' calls run in parallel, so a step that is not waiting on runners is bounded by the
    slowest of its calls, retries included, times the few rounds it makes). Past it the engine
    ends the cancellation with what it has, and says so in status.errors. `windows`: the waits
    the spec asks for on top (spec_windows)."""
    runners = grace + escalate_after + stuck_timeout
    deferral = deferral_limit(stuck_timeout, escalate_after) if is_job else 0.0
    return runners + deferral + steps * 3 * call_budget + windows


def log_keeping_bound(read_timeout: float, call_budget: float) -> float:
    """The longest one keeping of the runners' logs takes (necrocode.logkeeper enforces it):
    one read (bounded by its timeout, retries included) and one write (its retry budget). The
    reads and writes of many runners run in parallel, a bounded number at a time; a runner not
    done within the bound (many runners on lost nodes, each read waiting out its timeout) is
    reported as not kept, never waited for."""
    return read_timeout + call_budget


def keeps_logs(spec: CancellationSpec, default: bool, recorded_steps: Sequence[str] = ()) -> bool:
    """Whether this cancellation keeps its runners' logs (its step table has KeepLogs):
    spec.preserveLogs, else the operator's default (NECROCODE_PRESERVE_LOGS). Once the steps are
    recorded in status, they decide: an operator restarted with another default neither adds
    the step to a cancellation under way nor takes it away. A forced request keeps them too:
    a read is bounded, and the user asked for both."""
    if recorded_steps:
        return "KeepLogs" in recorded_steps
    return spec.preserve_logs if spec.preserve_logs is not None else default


def log_windows(keep: bool, read_timeout: float, call_budget: float) -> float:
    """What keeping the runners' logs adds to the cancellation's bound (its `windows`): the
    KeepLogs step's reading, the reading again shortly before the grace ends (it may outlast the
    runners), and the one right before the runners still there are forced (each bounded as a
    whole by log_keeping_bound)."""
    return 3 * log_keeping_bound(read_timeout, call_budget) if keep else 0.0


def time_left(bound: float, started_at: str | None, now: datetime) -> float:
    """Seconds the cancellation has left of its bound, counted from its recorded start (so a
    restart does not give it a new bound); 0 when it ran out."""
    started = parse_time(started_at)
    return max(0.0, bound - ((now - started).total_seconds() if started else 0.0))


def out_of_time(status: CancellationStatus, steps: Sequence[tuple[str, bool]], bound: float, now: datetime) -> bool:
    """The cancellation ran past its bound (the API answered too slowly, or not, for too long):
    the step at work fails, named in errors, and the steps not started are skipped. `steps`:
    (name, critical) in order. Returns whether a critical step was lost (the phase is then Failed)."""
    critical = False
    for name, is_critical in steps:
        step = status.step(name)
        if step.state == StepState.RUNNING:
            step.state, step.finished_at = StepState.FAILED, iso(now)
            step.message = f"did not finish within the cancellation's bound of {bound:.0f}s"
            status.add_error(name, "-", step.message)
            critical = critical or is_critical
        elif step.state == StepState.PENDING:
            step.state, step.message = StepState.SKIPPED, "skipped: the cancellation's bound ran out"
    return critical


# ----------------------------------------------------------------------------- runners
def prior_termination(progress: Progress, outcomes: Iterable[RunnerOutcome], fresh: bool) -> Termination:
    """What TerminateRunners starts from. `fresh`: this run signalled the runners and wrote
    their total just now, so they are counted from its list as the signals left it (a racing
    request's marker may have made one of them that request's meanwhile). Otherwise (after a
    restart, or a retry of the step) from the recorded total, with the runners recorded gone,
    forced or stuck by name (status.runnerOutcomes) and those counted but not listed by name
    (the list is bounded) as placeholders, so nothing is counted twice."""
    prior = Termination(total=0 if fresh else progress.runners_total)
    for o in outcomes:
        if o.outcome in ("Terminated", "Forced", "AlreadyGone"):
            prior.gone.add(o.pod)
        if o.outcome == "Forced":
            prior.forced.add(o.pod)
        if o.outcome == "Stuck":
            prior.stuck[o.pod] = "stuck"
    missing = progress.runners_terminated - len(prior.gone)
    forced = progress.runners_forced - len(prior.forced & prior.gone)
    for i in range(max(0, missing)):
        prior.gone.add(f"(earlier-{i})")
        if i < forced:
            prior.forced.add(f"(earlier-{i})")
    return prior
