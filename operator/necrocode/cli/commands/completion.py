"""`necrocode completion SHELL`: the shell's completion script (the names it completes come
from necrocode.cli.options)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from necrocode.cli.errors import EXIT_USAGE, CliError
from necrocode.cli.options import COMPLETE_VAR


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script of SHELL for necrocode: subcommands, flags, and the job
    names and namespaces of the cluster (best effort, within a few seconds).

    \b
    Examples:
      source <(necrocode completion bash)                      # this shell; or add it to ~/.bashrc
      necrocode completion zsh > "${fpath[1]}/_necrocode"        # zsh (compinit)
      necrocode completion fish > ~/.config/fish/completions/necrocode.fish
    """
    comp = get_completion_class(shell)
    if comp is None:  # pragma: no cover - click ships all three
        raise CliError(f"no completion for {shell}", EXIT_USAGE)
    click.echo(comp(ctx.find_root().command, {}, "necrocode", COMPLETE_VAR).source(), nl=False)
