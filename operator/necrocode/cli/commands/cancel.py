"""`necrocode job cancel`: cancel one job (or, with --task, one of its tasks) and follow it
live; or several jobs (JOB-IDs and/or -l), followed together and ended with an outcome table."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from necrocode import records
from necrocode.cli import options
from necrocode.cli.connection import Conn
from necrocode.cli.errors import EXIT_CODES_HELP, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, CliError
from necrocode.cli.live import exit_code_of, follow_hint, follow_live, watch_and_report
from necrocode.cli.options import (
    COOPERATIVE_DURATION,
    DRAIN_DURATION,
    DURATION,
    OUTPUT,
    complete_jobs,
    connection_options,
)
from necrocode.cli.printers import print_records, records_only
from necrocode.cli.submit import Ask, submit
from necrocode.cli.terminal import coloured, safe_block, terminal_safe
from necrocode.cli.text import record_ref
from necrocode.cli.views import brief_block, live_block, outcome_table, summary
from necrocode.model import GROUP, JOB_CANCELLATION, TASK_CANCELLATION

Obj = dict[str, Any]


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("job_ids", metavar="[JOB-ID]...", nargs=-1, shell_complete=complete_jobs)
@click.option("-l", "--selector", default=None, metavar="SELECTOR",
              help="Cancel every AgentJob that matches this label selector (with or instead of JOB-IDs).")
@click.option("--reason", default="", metavar="TEXT", help="Why; recorded on every task and event.")
@click.option("--force", is_flag=True, help="Delete runner pods at once (grace period 0). If a graceful "
              "cancellation of the job (of the task, with --task) is running, escalate it instead.")
@click.option("--grace-period", type=click.IntRange(0, 3600), default=None, metavar="SECONDS",
              help="Grace each runner pod gets to stop (operator default: 30).")
@click.option("--task", "task_id", default=None, metavar="TASK-ID", help="Cancel only this task (a TaskCancellation).")
@click.option("--no-cascade", is_flag=True, help="With --task: block the task's dependents instead of cancelling them.")
@click.option("--dry-run", is_flag=True, help="Ask the operator what it would do; change nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the cancellation until it finishes.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Stop waiting after this long (exit 6); the cancellation goes on. Default: no limit.")
@click.option("--drain", type=DRAIN_DURATION, default=None, metavar="DURATION",
              help="Drain instead of cancelling at once: block dispatch, cancel pending and ready tasks, let running "
                   "tasks finish for up to DURATION (1s to 24h: 90s, 5m, 1h), then cancel what still runs. Not with "
                   "--force.")
@click.option("--cooperative", type=COOPERATIVE_DURATION, default=None, metavar="DURATION",
              help="After signalling each runner, wait up to DURATION (0s to 1h) for it to stop by itself (save its "
                   "work, exit) before its pod is deleted. Default: 0, delete at once with its grace period. Not "
                   "with --force.")
@click.option("--keep-logs/--no-keep-logs", "keep_logs", default=None,
              help="Save the tail of each runner's log into an artifact ConfigMap before its pod is deleted "
                   "(spec.preserveLogs). Default: the operator's setting.")
@click.option("--ttl", type=DURATION, default=None, metavar="DURATION",
              help="Delete the record this long after it finished (spec.ttlSecondsAfterFinished): 3600, 90s, 30m, "
                   "1h, 1h30m, 2d.")
@OUTPUT
@connection_options
@click.pass_context
def cancel(ctx: click.Context, job_ids: tuple[str, ...], selector: str | None, reason: str, force: bool,
           grace_period: int | None, task_id: str | None, no_cascade: bool, dry_run: bool, wait: bool,
           timeout: float | None, drain: int | None, cooperative: int | None, keep_logs: bool | None,
           ttl: int | None, output: str,
           kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Cancel job JOB-ID (or, with --task, one task) and follow it live; or several jobs.

    Creates a JobCancellation (a TaskCancellation with --task) with a generated name; the
    operator does the work. By default it then shows each step, runners terminated (and
    forced), tasks cancelled, leases released and resources cleaned, and at the end what
    was affected, forced, released, deleted and kept. Ctrl-C stops watching, never the
    cancellation. Without a terminal it prints one plain line per change.

    Several JOB-IDs, or -l SELECTOR (the AgentJobs with those labels; the ones already
    finished are skipped), create one JobCancellation per job, follow them all and end with
    a summary table (job, cancellation, phase); the exit code is the highest of theirs.

    --drain lets the running tasks finish (up to DURATION) instead of stopping them;
    --cooperative gives each signalled runner a window to save its work and exit by itself;
    --keep-logs saves each runner's log tail before its pod goes (cancel-status names the
    ConfigMaps). They apply to a task's cancellation (--task) alike.

    \b
    Examples:
      necrocode job cancel job1 --reason "budget exceeded"
      necrocode job cancel job1 --force --no-wait
      necrocode job cancel job1 --grace-period 60 --timeout 120
      necrocode job cancel job1 --task t3 --no-cascade
      necrocode job cancel job1 --dry-run -o yaml
      necrocode job cancel job1 --drain 10m --cooperative 30s --keep-logs
      necrocode job cancel job1 job2 job3 --reason "wrong branch"
      necrocode job cancel -l team=search --ttl 1h --no-wait -o name
    """
    if drain is not None and force:
        raise click.UsageError("--drain lets running tasks finish and --force stops them now: choose one", ctx)
    if cooperative and force:
        raise click.UsageError("--cooperative waits for runners to stop by themselves and --force deletes them now: "
                               "choose one", ctx)
    if no_cascade and not task_id:
        raise click.UsageError("--no-cascade needs --task", ctx)
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait", ctx)
    if not job_ids and not selector:
        raise click.UsageError("name a JOB-ID (or several), or select jobs with -l SELECTOR", ctx)
    if task_id and (len(job_ids) != 1 or selector):
        raise click.UsageError("--task needs exactly one JOB-ID (and no -l)", ctx)
    conn = options.open_conn(ctx, kubeconfig, context, namespace)
    ask = Ask(reason=reason, force=force, grace_period=grace_period, dry_run=dry_run, ttl=ttl, drain=drain,
              cooperative=cooperative, keep_logs=keep_logs)
    if len(job_ids) != 1 or selector:
        cancel_many(conn, list(job_ids), selector, ask, wait=wait, timeout=timeout, output=output)
    [job_id] = job_ids
    ns = conn.namespace
    kind = TASK_CANCELLATION if task_id else JOB_CANCELLATION

    # validate before creating anything
    conn.check_crds(ns)
    try:
        conn.get("agentjobs", ns, job_id)
    except CliError as exc:
        if exc.exit_code == EXIT_NOT_FOUND and "CRDs" not in exc.message:
            raise CliError(f"job {job_id} not found in namespace {ns}", EXIT_NOT_FOUND) from None
        raise
    if task_id:
        tasks = records.find_tasks(conn.list_all("agenttasks", ns, records.task_selector(job_id, task_id)),
                                   job_id, task_id)
        if not tasks:
            raise CliError(f"task {task_id} of job {job_id} not found in namespace {ns}", EXIT_NOT_FOUND)

    user = conn.whoami()
    obj, escalated = submit(conn, ns, ask, kind, job_id, task_id, cascade=not no_cascade, user=user)
    name = obj["metadata"]["name"]
    machine = records_only(output)
    done = ("escalated to force (it was running gracefully; spec.force set to true)" if escalated else
            "created" + (" (dry run)" if dry_run else ""))
    click.echo(f"{kind.lower()}.{GROUP}/{name} {done}", err=machine)
    if not wait:
        if machine:
            print_records([obj], output, one=True)
        else:
            click.echo(f"follow it with: {follow_hint(conn, job_id, ns)}")
        return
    watch_and_report(conn, [obj], job=job_id, ns=ns, timeout=timeout, output=output, view=live_block, final=summary)


def cancel_many(conn: Conn, job_ids: list[str], selector: str | None, ask: Ask, *, wait: bool,
                timeout: float | None, output: str) -> NoReturn:
    """`cancel` of several jobs (JOB-IDs and/or -l): every named job must exist (else nothing
    is created); jobs the selector matches that already finished are skipped. One
    JobCancellation per job, a failed create reported and the others still made; followed
    together, then the outcome table. Exits with the highest code of them all."""
    ns = conn.namespace
    conn.check_crds(ns)
    targets = list(dict.fromkeys(job_ids))
    missing = []
    for job_id in targets:
        try:
            conn.get("agentjobs", ns, job_id)
        except CliError as exc:
            if exc.exit_code != EXIT_NOT_FOUND or "CRDs" in exc.message:
                raise
            missing.append(job_id)
    if missing:
        raise CliError(f"job{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found in namespace {ns}; "
                       "nothing was created", EXIT_NOT_FOUND)
    skipped: list[tuple[str, str]] = []
    if selector:
        matched = conn.list_all("agentjobs", ns, selector)
        if not matched and not targets:
            raise CliError(f"no jobs match the selector {selector} in namespace {ns}", EXIT_NOT_FOUND)
        more, finished = records.jobs_to_cancel(matched, targets)
        for name, phase in finished:
            skipped.append((name, f"already {phase}"))
            click.echo(f"job {terminal_safe(name)} skipped: already {terminal_safe(phase)}", err=True)
        targets += more

    machine = records_only(output)
    user = conn.whoami() if targets else None
    created: list[Obj] = []
    failed: dict[str, CliError] = {}
    for job_id in targets:
        try:
            obj, escalated = submit(conn, ns, ask, JOB_CANCELLATION, job_id, user=user)
        except CliError as exc:
            if exc.exit_code == EXIT_UNREACHABLE:
                raise
            failed[job_id] = exc
            click.echo(f"error: job {terminal_safe(job_id)}: {terminal_safe(exc.message)}", err=True)
            continue
        created.append(obj)
        done = "escalated to force" if escalated else "created" + (" (dry run)" if ask.dry_run else "")
        click.echo(f"{record_ref(obj)} {done}", err=machine)

    def show(objs: list[Obj]) -> None:
        if machine:
            print_records(objs, output)
        elif objs or failed or skipped:
            click.echo(safe_block(outcome_table(objs, failed, skipped), coloured(sys.stdout)))

    final = created
    if wait and created:
        final = follow_live(conn, created, hint=follow_hint(conn, None, ns), timeout=timeout, output=output,
                            view=brief_block if len(created) > 1 else live_block,
                            on_timeout=None if machine else show)
    if wait or machine:
        show(final)
    codes = [exit_code_of(final) if wait else EXIT_OK, *(exc.exit_code for exc in failed.values())]
    raise click.exceptions.Exit(max(codes))


