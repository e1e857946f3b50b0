"""What a cancellation's mode adds to the human views: what was asked (Drain and its
deadline, the cooperative stop window, kept logs), the drain and cooperative windows as they
run and how they ended, tasks that finished by themselves meanwhile, the kept logs, and what
a dry run would do in each mode. Apart from views.py so that each stays small; the views
place these lines, this module words them (one wording for the live block, the plain lines,
the summary and cancel-status)."""

from __future__ import annotations

from typing import Any

from necrocode.cli.text import capped, fmt_duration, span
from necrocode.model import CancellationResult, CooperativeStatus, DrainStatus, Plan, Window, parse_time

Obj = dict[str, Any]


def _seconds(value: Any) -> int | None:
    """An integer field of the spec as stored (anything else, e.g. a hand-written string, reads as absent)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ask_text(spec: Obj) -> str | None:
    """The mode asked for, in a few words; None for today's behaviour (mode Cancel, no
    cooperative window, the operator's default for logs), so those views stay as they were."""
    parts = []
    deadline = _seconds(spec.get("drainDeadlineSeconds"))
    if spec.get("mode") == "Drain":
        parts.append("Drain, running tasks may finish" + (f" for up to {fmt_duration(deadline)}" if deadline else ""))
    cooperative = _seconds(spec.get("cooperativeSeconds"))
    if cooperative:
        parts.append(f"cooperative stop up to {fmt_duration(cooperative)}")
    if spec.get("preserveLogs") is not None:
        parts.append("logs kept" if spec["preserveLogs"] is True else "logs not kept")
    if not parts:
        return None
    return ", ".join(parts if spec.get("mode") == "Drain" else ["Cancel", *parts])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _window_end(w: Window, left: bool) -> str:
    """When an open window ends: its deadline and, on a redrawn view, the time left (plain
    lines leave it out: they are printed when their text changes)."""
    if left and parse_time(w.deadline) is not None:
        remaining = -(span(w.deadline, None) or 0.0)
        return f"window ends {w.deadline} ({fmt_duration(max(0.0, remaining))} left)"
    return f"window ends {w.deadline or '?'}"


def drain_text(d: DrainStatus, left: bool = False) -> str:
    """The drain window: how many of the tasks running when it began finished inside it, and
    how many were still running (then cancelled) when it closed."""
    finished = f"{d.finished_in_window}/{d.running_at_start} running tasks finished"
    if d.finished_at is None:
        return f"{finished}, {d.still_running} still running; {_window_end(d, left)}"
    took = fmt_duration(span(d.started_at, d.finished_at))
    if d.ended_by == "AllFinished" or (d.ended_by is None and not d.still_running):
        return f"{finished} inside the window ({took})"
    when = {"Deadline": " at the deadline", "Forced": " when force cut the window short"}.get(d.ended_by or "", "")
    return f"{finished} inside the window ({took}); {d.still_running} still running{when}, cancelled"


def cooperative_text(c: CooperativeStatus | None, stopped: int, left: bool = False) -> str:
    """The cooperative window: runners that ended by themselves inside it."""
    text = f"{_plural(stopped, 'runner')} stopped by {'itself' if stopped == 1 else 'themselves'}"
    if c is None or c.started_at is None:
        return text
    if c.finished_at is None:
        return f"{text} so far; {_window_end(c, left)}"
    return f"{text} inside the window ({fmt_duration(span(c.started_at, c.finished_at))})"


def facts(r: CancellationResult, left: bool = False) -> list[tuple[str, str, str]]:
    """(key, label, text) of what the mode adds to a cancellation's progress, only what there
    is: the drain window, the cooperative one, tasks finished by themselves, kept logs."""
    st, p = r.status, r.status.progress
    out: list[tuple[str, str, str]] = []
    if st.drain is not None:
        out.append(("drain", "drain", drain_text(st.drain, left)))
    stopped = max(p.runners_cooperative, st.cooperative.stopped if st.cooperative else 0)
    if st.cooperative is not None or stopped:
        out.append(("cooperative", "cooperative", cooperative_text(st.cooperative, stopped, left)))
    if p.finished_during_cancel:
        n = p.finished_during_cancel
        out.append(("finished", "finished", f"{_plural(n, 'task')} finished by {'itself' if n == 1 else 'themselves'} "
                                            "during the cancellation (Done or Failed, kept as they ended)"))
    if p.logs_kept or p.logs_failed:
        out.append(("logs", "logs kept", f"{p.logs_kept}" + (f" ({p.logs_failed} could not be read)"
                                                              if p.logs_failed else "")))
    return out


def detail_lines(r: CancellationResult, indent: str) -> list[str]:
    """cancel-status and the summary: beyond the counts, who stopped cooperatively, whose task
    finished meanwhile, and the kept logs' ConfigMaps and failures (lists capped; the status
    lists only the first ones, the counts are exact)."""
    st, p = r.status, r.status.progress
    lines = []
    for outcome, label in (("Cooperative", "stopped by themselves"), ("TaskFinished", "task finished, not forced")):
        pods = [o.pod for o in st.runner_outcomes if o.outcome == outcome]
        if pods:
            lines.append(f"{indent}{label}: {capped(pods)}")
    kept = [f"configmap/{log.config_map}" for log in st.logs if log.config_map and not log.error]
    if kept:
        lines.append(f"{indent}logs kept in: {capped_of(kept, p.logs_kept)}")
    failed = [f"{log.pod}: {log.error}" for log in st.logs if log.error]
    if failed:
        lines.append(f"{indent}logs not kept: {capped_of(failed, p.logs_failed)}")
    return lines


def capped_of(items: list[str], total: int, limit: int = 20) -> str:
    """`items` capped like any list, saying how many more there are of `total` (the status
    lists only the first of them; its counts are exact)."""
    more = max(total, len(items)) - min(len(items), limit)
    return ", ".join(items[:limit]) + (f", ... and {more} more" if more > 0 else "")


def plan_rows(plan: Plan, spec: Obj) -> list[tuple[str, list[str]]]:
    """A dry run's plan by mode: with Drain, the running tasks it would let finish and the
    tasks it would cancel at once; the runners whose log it would keep. Rows only where the
    mode asks for them or the operator listed something, so a plain Cancel reads as before."""
    rows: list[tuple[str, list[str]]] = []
    drain = spec.get("mode") == "Drain"
    if drain or plan.drain_tasks:
        rows.append(("let finish", plan.drain_tasks))
    if drain or plan.cancelled_at_once:
        rows.append(("cancel now", plan.cancelled_at_once))
    if spec.get("preserveLogs") or plan.logs:
        rows.append(("keep logs of", plan.logs))
    return rows

