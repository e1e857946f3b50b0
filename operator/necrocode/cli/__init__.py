"""necrocode: cancel NecroCode jobs and tasks from a terminal, the way kubectl works.

The CLI only asks and shows: it creates JobCancellation/TaskCancellation resources (exactly
what `kubectl apply` would) and reads their status; the operator does the work. It talks to
the API server with the official synchronous client, parses status with the pydantic models
of `necrocode.model`, and orders, filters and finds records and tasks with `necrocode.records`,
the model it shares with the REST API (it imports only pure modules of the package).

Also installed as `kubectl-necrocode`, so `kubectl necrocode job cancel ...` works.

The package, top down (each layer imports only those below it; pyproject's import-linter
contract holds it):
  app          the command tree and `main` (the console scripts' entry point)
  commands/    one module a verb: cancel, status (cancel-status), cancellations, completion
  options      the flags every command shares; opening the connection from them
  live         following cancellations live until they finish
  views        the human views of a cancellation
  printers     -o table|wide|name|json|yaml|jsonpath=
  text         durations, tables, small texts
  kubeconfig   where the connection comes from (kubeconfig, in-cluster, impersonation)
  connection   Conn: the API calls, mapped to one-line errors
  errors       exit codes, CliError, the mapping of API answers
  terminal     escaping of cluster text, colour
  jsonpath     kubectl's JSONPath templates (pure)
"""

from necrocode.cli.app import cli, main

__all__ = ["cli", "main"]
