"""`python -m necrocode.cli`: the CLI without its console script."""

from necrocode.cli.app import main

main()
