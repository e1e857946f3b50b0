"""The command tree: `necrocode` (every error one line with its exit code, never a
traceback), its `job` group with the commands of necrocode.cli.commands, and `main`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from necrocode.cli.commands.cancel import cancel
from necrocode.cli.commands.cancellations import cancellations
from necrocode.cli.commands.completion import completion
from necrocode.cli.commands.status import cancel_status
from necrocode.cli.connection import map_exception
from necrocode.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from necrocode.cli.options import COMPLETE_VAR, Globals, connection_options


class Group(click.Group):
    """Every error is one line on stderr ("error: ..."), with the documented exit code; never a traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode") is False:
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            err = map_exception(exc)
            err.show()
            sys.exit(err.exit_code)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=Group, name="necrocode", context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Also a kubectl plugin: kubectl necrocode job cancel JOB ...")
@connection_options
@click.version_option(package_name="necrocode-cancel", prog_name="necrocode")
@click.pass_context
def cli(ctx: click.Context, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Cancel NecroCode jobs and tasks, and follow their cancellations.

    \b
    Examples:
      necrocode job cancel job1 --reason "budget exceeded"
      necrocode job cancel-status job1 --watch
      necrocode job cancellations -A
      kubectl necrocode job cancel job1 -n team-a --context prod
    """
    ctx.obj = Globals(kubeconfig=kubeconfig, context=context, namespace=namespace)


@cli.group()
def job() -> None:
    """Cancel a job or one of its tasks, and inspect cancellations.

    \b
    Examples:
      necrocode job cancel job1 --reason "wrong approach"
      necrocode job cancel job1 --task t3 --no-cascade
      necrocode job cancel-status job1
      necrocode job cancellations --job job1
    """


for command in (cancel, cancel_status, cancellations):
    job.add_command(command)
cli.add_command(completion)


def main() -> None:
    cli.main(prog_name="kubectl necrocode" if "kubectl" in os.path.basename(sys.argv[0]) else "necrocode",
             complete_var=COMPLETE_VAR)
