"""The CLI's exit codes and its one-line errors: every failure is one line on stderr and a
documented exit code (necrocode.cli.connection maps the API server's answers to them)."""

from __future__ import annotations

import sys
from typing import IO, Any

import click

from necrocode.cli.terminal import terminal_safe
from necrocode.model import Phase

EXIT_OK = 0
EXIT_ERROR = 1  # anything not covered below (a server error, an unexpected answer)
EXIT_USAGE = 2  # click's own code for usage errors
EXIT_PARTIAL = 3
EXIT_FAILED = 4
EXIT_REJECTED = 5
EXIT_TIMEOUT = 6
EXIT_NOT_FOUND = 7
EXIT_FORBIDDEN = 8
EXIT_UNREACHABLE = 9
EXIT_INTERRUPTED = 130

PHASE_EXIT = {
    Phase.COMPLETED: EXIT_OK,
    Phase.PARTIALLY_COMPLETED: EXIT_PARTIAL,
    Phase.FAILED: EXIT_FAILED,
    Phase.REJECTED: EXIT_REJECTED,
}

EXIT_CODES_HELP = """\b
Exit codes:
  0    Completed (or created, with --no-wait)
  2    usage error (bad or conflicting flags)
  3    PartiallyCompleted
  4    Failed
  5    Rejected
  6    timed out while waiting (the cancellation goes on)
  7    not found (job, task, cancellation or the CRDs)
  8    forbidden (RBAC) or unauthorized
  9    cluster unreachable or no usable kubeconfig
  130  interrupted (Ctrl-C stops watching, never the cancellation)
  1    any other error"""

# ----------------------------------------------------------------------------- errors
class CliError(Exception):
    """A one-line error on stderr ("error: ...") and a documented exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {terminal_safe(self.message)}", file=file or sys.stderr)


def where(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "across all namespaces"
