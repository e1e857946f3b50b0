"""`necrocode job cancellations`: the records of both kinds, newest first; paged by the API's
limit/continue, across both kinds with one token of its own."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import click

from necrocode import records
from necrocode.cli import options
from necrocode.cli.connection import Conn
from necrocode.cli.errors import EXIT_CODES_HELP, where
from necrocode.cli.options import OUTPUT, complete_jobs, connection_options
from necrocode.cli.printers import print_records
from necrocode.model import JOB_CANCELLATION, PLURAL, TASK_CANCELLATION, Phase
from necrocode.naming import label_ok

Obj = dict[str, Any]

KINDS = (JOB_CANCELLATION, TASK_CANCELLATION)


def encode_token(kind: str, token: str | None) -> str:
    raw = json.dumps({"k": kind, "c": token or ""}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(text: str) -> tuple[str, str | None]:
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        kind, token = data["k"], data["c"]
        if kind not in KINDS or not isinstance(token, str):
            raise ValueError(kind)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise click.BadParameter("not a token printed by 'necrocode job cancellations'", param_hint="--continue") \
            from None
    return kind, token or None


def list_page(conn: Conn, ns: str | None, selector: str | None, limit: int | None,
              token: str | None) -> tuple[list[Obj], str | None]:
    """One page across both kinds: JobCancellations, then TaskCancellations, each paged by the
    API's own limit/continue; the combined continue token says which kind and where."""
    if limit is None:
        return conn.list_records(ns, selector), None
    kind, cont = decode_token(token) if token else (JOB_CANCELLATION, None)
    out: list[Obj] = []
    while True:
        items, cont = conn.list_objs(PLURAL[kind], ns, selector=selector, limit=limit - len(out), cont=cont)
        out += items
        if cont:
            return out, encode_token(kind, cont)
        if kind == TASK_CANCELLATION:
            return out, None
        kind = TASK_CANCELLATION
        if len(out) >= limit:
            more, _ = conn.list_objs(PLURAL[kind], ns, selector=selector, limit=1)
            return out, (encode_token(kind, None) if more else None)


@click.command("cancellations", epilog=EXIT_CODES_HELP)
@click.option("--limit", type=click.IntRange(1, 10000), default=None, metavar="N",
              help="At most N per page (the API's limit); prints a --continue token for the next page.")
@click.option("--continue", "token", default=None, metavar="TOKEN", help="Next page, from the token of the last one.")
@click.option("--job", "job_filter", default=None, metavar="JOB", shell_complete=complete_jobs,
              help="Only this job's cancellations.")
@click.option("--phase", type=click.Choice([p.value for p in Phase], case_sensitive=False), default=None,
              help="Only this phase (filtered here, so a page may hold fewer than --limit rows).")
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@OUTPUT
@connection_options
@click.pass_context
def cancellations(ctx: click.Context, limit: int | None, token: str | None, job_filter: str | None, phase: str | None,
                  all_namespaces: bool, output: str, kubeconfig: str | None, context: str | None,
                  namespace: str | None) -> None:
    """List cancellations, newest first.

    Without --limit it reads every page and sorts them all newest first. With --limit each
    page is one page of the API (name order: JobCancellations, then TaskCancellations),
    sorted newest first within the page, followed by the token for the next one.

    \b
    Examples:
      necrocode job cancellations
      necrocode job cancellations --job job1 --phase Running
      necrocode job cancellations -A --limit 50
      necrocode job cancellations -A --limit 50 --continue <token>
    """
    if token and limit is None:
        raise click.UsageError("--continue needs --limit", ctx)
    if token:
        decode_token(token)
    conn = options.open_conn(ctx, kubeconfig, context, namespace)
    ns = None if all_namespaces else conn.namespace
    if job_filter and not label_ok(job_filter):
        raise click.BadParameter(f"{job_filter!r} is not a job name", param_hint="--job")
    selector = records.job_selector(job_filter) if job_filter else None
    items, next_token = list_page(conn, ns, selector, limit, token)
    if phase:
        items = records.in_phase(items, Phase(phase))  # click gives the choice as spelled there
    items = records.newest_first(items)
    print_records(items, output, cont=next_token, namespaces=ns is None)
    if not items and output in ("table", "wide", "name"):
        click.echo(f"no cancellations found {where(ns)}", err=True)
    if next_token and output in ("table", "wide", "name"):  # json/yaml/jsonpath: metadata.continue
        more = f"{conn.prog} job cancellations --limit {limit} --continue {next_token}"
        click.echo(f"more: {more}", err=True)


