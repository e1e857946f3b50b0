"""necrocode: cancel NecroCode jobs and tasks from a terminal, the way kubectl works.

The CLI only asks and shows: it creates JobCancellation/TaskCancellation resources (exactly
what `kubectl apply` would) and reads their status; the operator does the work. It talks to
the API server with the official synchronous client, parses status with the pydantic models
of `necrocode.model`, and orders, filters and finds records and tasks with `necrocode.records`,
the model it shares with the REST API (it imports only pure modules of the package).

Also installed as `kubectl-necrocode`, so `kubectl necrocode job cancel ...` works.

The package, top down (a module imports only from the lines below its own; modules on one
line are independent; pyproject's import-linter contracts hold it, and keep the rendering
apart from the connection):
  app                        the command tree and `main` (the console scripts' entry point)
  commands/                  one module a verb: cancel, status (cancel-status), cancellations, completion
  options | live | submit    the flags every command shares and opening the connection from them;
                             following cancellations live until they finish; what `cancel` asks
                             for (the new resource, or escalating a running one)
  views | printers | kubeconfig   the human views of a cancellation; -o table|wide|name|json|
                             yaml|jsonpath=; where the connection comes from (kubeconfig,
                             in-cluster, impersonation)
  modes                      what a cancellation's mode adds to the views (drain and cooperative
                             windows, kept logs, a dry run's plan by mode)
  text | connection          durations, tables, small texts; Conn: the API calls, the API's
                             answers mapped to one-line errors
  errors                     exit codes, CliError
  terminal | jsonpath        escaping of cluster text, colour; kubectl's JSONPath templates (pure)
"""

from necrocode.cli.app import cli, main

__all__ = ["cli", "main"]
