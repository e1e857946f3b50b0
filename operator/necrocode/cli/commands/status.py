"""`necrocode job cancel-status JOB-ID`: the job's latest cancellation(s) (records.latest),
once or followed live with --watch."""

from __future__ import annotations

import sys
from typing import Any

import click

from necrocode import records
from necrocode.cli import options
from necrocode.cli.connection import Conn
from necrocode.cli.errors import EXIT_CODES_HELP, EXIT_NOT_FOUND, CliError
from necrocode.cli.live import watch_and_report
from necrocode.cli.options import OUTPUT, complete_jobs, connection_options
from necrocode.cli.printers import print_records, records_only
from necrocode.cli.terminal import coloured, safe_block
from necrocode.cli.views import status_view

Obj = dict[str, Any]


def latest_cancellations(conn: Conn, job_id: str, ns: str) -> list[Obj]:
    """The newest cancellation of the job, and any other that is still going on (records.latest)."""
    selector = records.job_selector(job_id)
    return records.latest(records.of_job(conn.list_records(ns, selector), job_id))


@click.command("cancel-status", epilog=EXIT_CODES_HELP)
@click.argument("job_id", metavar="JOB-ID", shell_complete=complete_jobs)
@click.option("--watch", "-w", is_flag=True, help="Follow until finished; then exit with the phase's code.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="With --watch: stop watching after this long (exit 6).")
@OUTPUT
@connection_options
@click.pass_context
def cancel_status(ctx: click.Context, job_id: str, watch: bool, timeout: float | None, output: str,
                  kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Show the latest cancellation(s) of job JOB-ID.

    The newest cancellation of the job (JobCancellation or TaskCancellation) and any other
    still running: phase, every step with its state, duration and message, which steps are
    done and which pending, progress, and errors with their attempts. Without --watch the
    exit code is 0 whatever the phase; with --watch it is the phase's code.

    \b
    Examples:
      necrocode job cancel-status job1
      necrocode job cancel-status job1 --watch
      necrocode job cancel-status job1 -n team-a -o yaml
    """
    if timeout is not None and not watch:
        raise click.UsageError("--timeout needs --watch", ctx)
    conn = options.open_conn(ctx, kubeconfig, context, namespace)
    ns = conn.namespace
    objs = latest_cancellations(conn, job_id, ns)
    if not objs:
        conn.check_crds(ns)
        raise CliError(f"no cancellations found for job {job_id} in namespace {ns}", EXIT_NOT_FOUND)
    if watch:
        watch_and_report(conn, objs, job=job_id, ns=ns, timeout=timeout, output=output, view=status_view, final=None)
    if records_only(output):
        print_records(objs, output)
        return
    click.echo("\n\n".join(safe_block(status_view(records.result_of(o), o), coloured(sys.stdout)) for o in objs))


