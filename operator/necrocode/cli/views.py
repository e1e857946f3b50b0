"""The human views of a cancellation: the live block redrawn on a terminal (and its plain
one-line-a-change facts), the summary at the end of `cancel`, `cancel-status`'s view, and the
line a job and outcome table of `cancel` of several jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from necrocode import records
from necrocode.cli import modes
from necrocode.cli.errors import CliError
from necrocode.cli.terminal import Painted
from necrocode.cli.text import capped, fmt_duration, kind_ref, requester_text, runners_text, span, table
from necrocode.model import CancellationResult, CancellationStatus, Plan, StepState

Obj = dict[str, Any]


STEP_MARK = {StepState.PENDING: "[ ]", StepState.RUNNING: "[>]", StepState.SUCCEEDED: "[x]",
             StepState.FAILED: "[!]", StepState.SKIPPED: "[-]"}


def progress_facts(r: CancellationResult) -> list[tuple[str, str]]:
    """The live facts of a cancellation, as (key, text); a plain-output line is printed when
    a key's text changes."""
    st, p = r.status, r.status.progress
    phase = ("phase", f"phase {st.phase.value}" + (f": {st.message}" if st.message else ""))
    facts: list[tuple[str, str]] = [] if st.terminal else [phase]
    for s in st.steps:
        if s.state == StepState.PENDING:
            continue
        text = f"step {s.name}: {s.state.value}"
        if s.state in (StepState.SUCCEEDED, StepState.FAILED):
            text += f" ({fmt_duration(span(s.started_at, s.finished_at))})"
        if s.message:
            text += f" - {s.message}"
        facts.append((f"step/{s.name}", text))
    if p.runners_total or p.runners_terminated:
        facts.append(("runners", f"runners terminated {runners_text(st)}"))
    if p.tasks_cancelled or p.tasks_blocked:
        facts.append(("tasks", f"tasks cancelled {p.tasks_cancelled}" +
                      (f", blocked {p.tasks_blocked}" if p.tasks_blocked else "")))
    if p.leases_released:
        facts.append(("leases", f"leases released {p.leases_released}"))
    if p.resources_deleted or p.artifacts_preserved:
        facts.append(("resources", f"resources cleaned {p.resources_deleted} deleted, {p.artifacts_preserved} kept"))
    facts += [(key, f"{label} {text}") for key, label, text in modes.facts(r)]
    for e in st.errors:
        facts.append((f"error/{e.step}/{e.object}", f"error in {e.step} on {e.object} "
                                                    f"(attempt {e.attempts}): {e.message}"))
    return facts + ([phase] if st.terminal else [])


def bar(done: int, total: int, width: int = 20) -> str:
    if total <= 0:
        return ""
    n = min(width, round(width * done / total))
    return "[" + "#" * n + "-" * (width - n) + "]"


def live_block(r: CancellationResult, obj: Obj) -> list[str]:
    """The small block redrawn on a terminal while a cancellation runs."""
    st, p = r.status, r.status.progress
    what = f"job {r.job_name}" + (f" task {r.task_id}" if r.task_id else "")
    elapsed = fmt_duration(span(records.started_at(obj), st.completed_at))
    lines: list[str] = [Painted(f"{kind_ref(r)} ({what})  ", st.phase.value, f"  {elapsed}")]
    ask = modes.ask_text(obj.get("spec") or {})
    if ask:
        lines.append(f"  {'mode':<19} {ask}")
    if not st.steps:
        lines.append("  waiting for the operator to pick it up ...")
    for s in st.steps:
        dur = fmt_duration(span(s.started_at, s.finished_at)) if s.started_at else ""
        lines.append(f"  {STEP_MARK.get(s.state, '[?]')} {s.name:<18} {s.state.value:<9} {dur:>6}  {s.message or ''}".rstrip())
    lines.append(f"  runners terminated  {runners_text(st):<16} {bar(p.runners_terminated, p.runners_total)}".rstrip())
    lines.append(f"  tasks cancelled     {p.tasks_cancelled}" + (f" (blocked {p.tasks_blocked})" if p.tasks_blocked else ""))
    lines.append(f"  leases released     {p.leases_released}")
    lines.append(f"  resources cleaned   {p.resources_deleted} deleted, {p.artifacts_preserved} kept")
    lines += [f"  {label:<19} {text}" for _, label, text in modes.facts(r, left=True)]
    if st.errors:
        lines.append(f"  errors              {len(st.errors)} (last: {st.errors[-1].object}: {st.errors[-1].message})")
    return lines


def summary(r: CancellationResult, obj: Obj) -> list[str]:
    """What a finished cancellation did: tasks, runners, resources, errors."""
    st = r.status
    spec = obj.get("spec") or {}
    lines: list[str] = [Painted(f"{kind_ref(r)} in namespace {r.namespace}: ", st.phase.value,
                                f" in {fmt_duration(span(records.started_at(obj), st.completed_at))}")]
    if st.message:
        lines.append(f"  {st.message}")
    if st.duplicate_of:
        lines.append(f"  duplicate of {st.duplicate_of}: that cancellation does the work")
    ask = modes.ask_text(spec)
    if ask:
        lines.append(f"  mode: {ask}")
    if spec.get("dryRun"):
        lines.append("dry run: nothing was changed; it would act on")
        if st.plan is not None:
            lines += plan_lines(st.plan, spec, indent="  ")
    if st.affected_tasks:
        lines.append(f"affected tasks ({len(st.affected_tasks)}):")
        rows = [[a.task_id, a.before, a.after, a.runner or "-", a.reason] for a in st.affected_tasks[:50]]
        lines += table(["TASK", "BEFORE", "AFTER", "RUNNER", "REASON"], rows, indent="  ")
        if len(st.affected_tasks) > 50:
            lines.append(f"  ... and {len(st.affected_tasks) - 50} more (-o yaml shows all)")
    if st.progress.runners_total or st.runner_outcomes:
        forced = [o.pod for o in st.runner_outcomes if o.outcome == "Forced"]
        lines.append(f"runners terminated: {runners_text(st)}" + (f"; forced: {capped(forced)}" if forced else ""))
        outcomes = st.runner_outcomes[:50]
        if outcomes:
            lines += table(["POD", "OUTCOME"], [[o.pod, o.outcome] for o in outcomes], indent="  ")
    lines += [f"{label}: {text}" for _, label, text in modes.facts(r)]
    lines += modes.detail_lines(r, indent="  ")
    if st.cleanup is not None and any((st.cleanup.released, st.cleanup.deleted, st.cleanup.preserved,
                                       st.cleanup.failed)):
        lines.append("resources:")
        for label, items in (("released", st.cleanup.released), ("deleted", st.cleanup.deleted),
                             ("kept", st.cleanup.preserved), ("failed", st.cleanup.failed)):
            if items:
                lines.append(f"  {label:<9} {capped(items)}")
    if st.cascade_warnings:
        lines.append("warnings:")
        lines += [f"  {w}" for w in st.cascade_warnings]
    if st.errors:
        lines.append(f"errors ({len(st.errors)}):")
        lines += error_table(st, indent="  ")
    return lines


def plan_lines(plan: Plan, spec: Obj, indent: str) -> list[str]:
    """A dry run's plan: what it would act on, and what its mode would do (modes.plan_rows)."""
    rows = [("runner pods", plan.runner_pods), ("leases", plan.leases), ("delete", plan.scratch_resources),
            ("keep", plan.artifacts), *modes.plan_rows(plan, spec)]
    return [f"{indent}{label:<13} {capped(items) or '-'}" for label, items in rows]


def error_table(st: CancellationStatus, indent: str) -> list[str]:
    """The errors the operator recorded, with their attempts."""
    return table(["STEP", "OBJECT", "ATTEMPTS", "MESSAGE"],
                 [[e.step, e.object, str(e.attempts), e.message] for e in st.errors], indent=indent)


def status_view(r: CancellationResult, obj: Obj) -> list[str]:
    """cancel-status: phase, every step with state, duration and message, done/pending, errors."""
    st, spec = r.status, obj.get("spec") or {}
    lines = [f"{kind_ref(r)}  (namespace {r.namespace})"]
    target = f"{r.job_name}" + (f", task {r.task_id} ({'cascade' if spec.get('cascade', True) else 'no cascade'})"
                                if r.task_id else "")
    lines.append(f"  job:        {target}")
    lines.append(Painted("  phase:      ", st.phase.value, f" - {st.message}" if st.message else ""))
    if spec.get("reason"):
        lines.append(f"  reason:     {spec['reason']}")
    who = requester_text(obj)
    if who != "-":
        lines.append(f"  requested:  by {who}")
    ask = modes.ask_text(spec)
    if ask:
        lines.append(f"  mode:       {ask}")
    flags = [k for k, v in (("force", spec.get("force")), ("dry run", spec.get("dryRun"))) if v]
    started = records.started_at(obj)
    lines.append(f"  started:    {started or '-'}  (duration {fmt_duration(span(started, st.completed_at))})"
                 + (f"  [{', '.join(flags)}]" if flags else ""))
    if st.duplicate_of:
        lines.append(f"  duplicate:  of {st.duplicate_of}")
    if st.steps:
        done = [s.name for s in st.steps if s.state in (StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED)]
        pending = [s.name for s in st.steps if s.name not in done]
        lines.append(f"  steps:      {len(done)}/{len(st.steps)} done" +
                     (f"; pending: {', '.join(pending)}" if pending else ""))
        rows = [[s.name, s.state.value, fmt_duration(span(s.started_at, s.finished_at)) if s.started_at else "-",
                 s.message or ""] for s in st.steps]
        lines += table(["STEP", "STATE", "DURATION", "MESSAGE"], rows, indent="    ")
    else:
        lines.append("  steps:      none yet (the operator has not picked it up)")
    p = st.progress
    lines.append(f"  progress:   runners {runners_text(st)}, tasks cancelled {p.tasks_cancelled}"
                 + (f" (blocked {p.tasks_blocked})" if p.tasks_blocked else "")
                 + f", leases released {p.leases_released}, resources {p.resources_deleted} deleted / "
                 f"{p.artifacts_preserved} kept")
    lines += [f"  {label + ':':<11} {text}" for _, label, text in modes.facts(r)]
    lines += modes.detail_lines(r, indent="    ")
    if spec.get("dryRun") and st.plan is not None:
        lines.append("  dry run:    nothing was changed; it would act on")
        lines += plan_lines(st.plan, spec, indent="    ")
    if st.errors:
        lines.append(f"  errors:     {len(st.errors)}")
        lines += error_table(st, indent="    ")
    return lines


def brief_block(r: CancellationResult, obj: Obj) -> list[str]:
    """One line a cancellation, when several are followed on a terminal."""
    st = r.status
    return [Painted(f"{r.job_name}  {kind_ref(r)}  ", st.phase.value,
                    f"  {fmt_duration(span(records.started_at(obj), st.completed_at))}  runners {runners_text(st)}, "
                    f"tasks cancelled {st.progress.tasks_cancelled}")]


def outcome_table(final: list[Obj], failed: Mapping[str, CliError], skipped: Sequence[tuple[str, str]]) -> list[str]:
    """The end of `cancel` of several jobs: a row a job (cancellation, phase, message), then the counts."""
    rows = [[r.job_name, r.name, r.status.phase.value, (r.status.message or "")[:100]]
            for r in (records.result_of(o) for o in final)]
    rows += [[job, "-", "Error", exc.message[:100]] for job, exc in failed.items()]
    rows += [[job, "-", "Skipped", why] for job, why in skipped]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[2]] = counts.get(row[2], 0) + 1
    total = f"{len(rows)} job{'s' if len(rows) != 1 else ''}: " + ", ".join(f"{n} {what}" for what, n in counts.items())
    return [*table(["JOB", "CANCELLATION", "PHASE", "MESSAGE"], rows, phase_col=2), total]

