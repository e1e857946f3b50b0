"""Live progress: follow cancellations until they finish, shown as they change (a block
redrawn in place on a terminal, else a plain line a change), then report and exit with the
documented code. Ctrl-C stops watching, never the cancellation."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Callable
from typing import IO, Any, NoReturn

import click

from necrocode import records
from necrocode.cli import terminal
from necrocode.cli.connection import Conn
from necrocode.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, PHASE_EXIT, CliError
from necrocode.cli.printers import print_records, records_only
from necrocode.cli.terminal import coloured, paint, safe_block, terminal_safe
from necrocode.cli.text import fmt_duration
from necrocode.cli.views import progress_facts
from necrocode.model import PLURAL, CancellationResult

Obj = dict[str, Any]

POLL_SECONDS = 0.5


class Display:
    """Live progress: on a terminal a block redrawn in place (ANSI cursor-up), otherwise one
    plain line per change."""

    def __init__(self, stream: IO[str], tty: bool, block: Callable[[CancellationResult, Obj], list[str]],
                 colour: bool = False):
        self.stream, self.tty, self.block, self.colour = stream, tty, block, colour and tty
        self.drawn = 0
        self.seen: dict[tuple[str, str], str] = {}
        self.t0 = time.monotonic()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(self, objs: list[Obj]) -> None:
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            lines = [paint(ln, self.colour, width) for o in objs for ln in self.block(records.result_of(o), o)]
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self._write(up + "\x1b[J" + "".join(ln + "\n" for ln in lines))
            self.drawn = len(lines)
            return
        out = []
        for o in objs:
            r = records.result_of(o)
            prefix = f"{r.name}: " if len(objs) > 1 else ""
            for key, text in progress_facts(r):
                if self.seen.get((r.name, key)) != text:
                    self.seen[(r.name, key)] = text
                    out.append(f"[{fmt_duration(time.monotonic() - self.t0):>6}] {terminal_safe(prefix + text)}\n")
        if out:
            self._write("".join(out))

    def clear(self) -> None:
        if self.tty and self.drawn:
            self._write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0


class WaitTimeout(Exception):
    def __init__(self, objs: list[Obj]):
        self.objs = objs


def follow(conn: Conn, objs: list[Obj], timeout: float | None, on_change: Callable[[list[Obj]], None]) -> list[Obj]:
    """Poll the cancellations (twice a second) until all are finished; raise WaitTimeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        on_change(objs)
        if all(records.is_finished(o) for o in objs):
            return objs
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise WaitTimeout(objs)
        time.sleep(POLL_SECONDS if remaining is None else min(POLL_SECONDS, remaining))
        objs = refresh(conn, objs)


def refresh(conn: Conn, objs: list[Obj]) -> list[Obj]:
    """The cancellations as they are now: a GET each, or for more than two of one namespace
    one list by their job labels (`necrocode.io/job in (...)`) a kind, and a GET for any not in it."""
    def get(o: Obj) -> Obj:
        return conn.get(PLURAL[o["kind"]], o["metadata"]["namespace"], o["metadata"]["name"])
    namespaces = {o["metadata"]["namespace"] for o in objs}
    selector = records.jobs_selector(records.result_of(o).job_name for o in objs)
    if len(objs) <= 2 or len(namespaces) != 1 or selector is None:
        return [get(o) for o in objs]
    [ns] = namespaces
    listed: dict[tuple[str, str], Obj] = {}
    for kind in sorted({o["kind"] for o in objs}):
        for item in conn.list_all(PLURAL[kind], ns, selector):
            listed[(kind, item["metadata"]["name"])] = {**item, "kind": kind}
    return [listed.get((o["kind"], o["metadata"]["name"])) or get(o) for o in objs]


def exit_code_of(objs: list[Obj]) -> int:
    """The worst phase among the followed cancellations decides the exit code."""
    codes = [PHASE_EXIT.get(records.result_of(o).status.phase, EXIT_OK) for o in objs]
    return max(codes, default=EXIT_OK)


def follow_hint(conn: Conn, job: str | None, ns: str) -> str:
    """The command that follows the job's cancellations (without a job: lists the namespace's)."""
    extra = (f" --context {conn.context}" if conn.context else "") + (
        f" --kubeconfig {conn.kubeconfig}" if conn.kubeconfig else "") + (
        f" --as {shlex.quote(conn.as_user)}" if conn.as_user else "") + "".join(
        f" --as-group {shlex.quote(g)}" for g in conn.as_groups)
    if job is None:
        return f"{conn.prog} job cancellations -n {ns}{extra}"
    return f"{conn.prog} job cancel-status {job} -n {ns} --watch{extra}"


def follow_live(conn: Conn, objs: list[Obj], *, hint: str, timeout: float | None, output: str,
                view: Callable[[CancellationResult, Obj], list[str]],
                on_timeout: Callable[[list[Obj]], None] | None = None) -> list[Obj]:
    """Follow cancellations, shown live (on stderr when stdout holds only records), until all
    have finished; Ctrl-C exits 130 and a timeout 6, each saying how to follow them (`hint`)."""
    stream = sys.stderr if records_only(output) else sys.stdout
    display = Display(stream, terminal.interactive(stream), view, terminal.coloured(stream))
    try:
        objs = follow(conn, objs, timeout, display.update)
    except KeyboardInterrupt:
        display.clear()
        click.echo(f"\nstill running; follow it with: {hint}", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except WaitTimeout as exc:
        display.clear()
        if on_timeout is not None:
            on_timeout(exc.objs)
        phase = records.result_of(exc.objs[0]).status.phase.value if exc.objs else "?"
        names = ", ".join(f"{o['kind'].lower()}/{o['metadata']['name']}" for o in exc.objs)
        raise CliError(f"timed out after {fmt_duration(timeout)} waiting for {names} (phase {phase}); it goes on, "
                       f"follow it with: {hint}", EXIT_TIMEOUT) from None
    display.clear()
    return objs


def watch_and_report(conn: Conn, objs: list[Obj], *, job: str, ns: str, timeout: float | None, output: str,
                     view: Callable[[CancellationResult, Obj], list[str]],
                     final: Callable[[CancellationResult, Obj], list[str]] | None) -> NoReturn:
    """Follow cancellations live, then print the result; exits with the documented code."""
    objs = follow_live(conn, objs, hint=follow_hint(conn, job, ns), timeout=timeout, output=output, view=view)
    if records_only(output):
        print_records(objs, output, one=len(objs) == 1 and final is not None)
    else:
        blocks = [(final or view)(records.result_of(o), o) for o in objs]
        click.echo("\n\n".join(safe_block(b, coloured(sys.stdout)) for b in blocks))
    raise click.exceptions.Exit(exit_code_of(objs))

