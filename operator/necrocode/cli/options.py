"""What every command shares: the connection flags (kubectl's, accepted before or after the
subcommand), -o, durations, the shell completion of job and namespace names, and opening the
connection from the flags."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from click.shell_completion import CompletionItem
from kubernetes import client

from necrocode.cli.connection import LIST_CHUNK, Conn
from necrocode.cli.kubeconfig import connect
from necrocode.cli.printers import OutputFormat
from necrocode.model import GROUP, VERSION


def prog_name(ctx: click.Context) -> str:
    root = ctx.find_root().info_name or "necrocode"
    return "kubectl necrocode" if "kubectl" in root else "necrocode"


@dataclass
class Globals:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


AS_USER, AS_GROUPS = "necrocode.as", "necrocode.as-group"  # in ctx.meta, shared by the group and its commands


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:  # given after the subcommand too: the last one given wins
            ctx.meta[key] = value
    return callback


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--kubeconfig, --context, -n/--namespace, --as and --as-group, accepted on every command
    (kubectl-style)."""
    f = click.option("--as-group", multiple=True, metavar="GROUP", expose_value=False, callback=_remember(AS_GROUPS),
                     help="Group to impersonate, with --as; repeat it for several (like kubectl).")(f)
    f = click.option("--as", metavar="USER", expose_value=False, callback=_remember(AS_USER),
                     help="User to impersonate, e.g. system:serviceaccount:NS:NAME (like kubectl).")(f)
    f = click.option("-n", "--namespace", default=None, metavar="NS", shell_complete=complete_namespaces,
                     help="Namespace (default: the context's namespace, else 'default').")(f)
    f = click.option("--context", default=None, metavar="NAME", help="kubeconfig context to use.")(f)
    f = click.option("--kubeconfig", default=None, metavar="PATH", type=click.Path(dir_okay=False),
                     help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config; with neither, and in a "
                          "pod, its ServiceAccount).")(f)
    return f


def open_conn(ctx: click.Context, kubeconfig: str | None, context: str | None, namespace: str | None) -> Conn:
    g: Globals = ctx.find_object(Globals) or Globals()
    as_user, as_groups = ctx.meta.get(AS_USER), tuple(ctx.meta.get(AS_GROUPS) or ())
    if as_groups and not as_user:
        raise click.UsageError("--as-group needs --as (the user to impersonate)", ctx)
    return connect(kubeconfig or g.kubeconfig, context or g.context, namespace or g.namespace, prog_name(ctx),
                   as_user=as_user, as_groups=as_groups)


# ----------------------------------------------------------------------------- shell completion
COMPLETE_VAR = "_NECROCODE_COMPLETE"
COMPLETION_TIMEOUT = (2, 5)  # connect, read: a slow cluster must not hang the shell


def _completion_conn(ctx: click.Context) -> Conn:
    """A connection from the flags typed so far (the command's, else the group's)."""
    given: dict[str, Any] = {}
    node: click.Context | None = ctx
    while node is not None:
        for key in ("kubeconfig", "context", "namespace"):
            if node.params.get(key) and key not in given:
                given[key] = node.params[key]
        node = node.parent
    return connect(given.get("kubeconfig"), given.get("context"), given.get("namespace"), "necrocode",
                   as_user=ctx.meta.get(AS_USER), as_groups=tuple(ctx.meta.get(AS_GROUPS) or ()))


def _names(ctx: click.Context, list_names: Callable[[Conn], list[str]], incomplete: str) -> list[CompletionItem]:
    try:
        names = list_names(_completion_conn(ctx))
    except Exception:  # completion is best effort: no cluster, no rights, no answer in time
        return []
    return [CompletionItem(n) for n in sorted(set(names)) if n.startswith(incomplete)]


def complete_jobs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """JOB-ID: the AgentJobs of the namespace."""
    def jobs(conn: Conn) -> list[str]:
        resp: Any = conn.custom.list_namespaced_custom_object(GROUP, VERSION, conn.namespace, "agentjobs",
                                                              limit=LIST_CHUNK, _request_timeout=COMPLETION_TIMEOUT)
        return [str((o.get("metadata") or {}).get("name") or "") for o in resp.get("items") or []]
    return _names(ctx, jobs, incomplete)


def complete_namespaces(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """-n: the namespaces, where the user may list them."""
    def namespaces(conn: Conn) -> list[str]:
        resp: Any = client.CoreV1Api(conn.api).list_namespace(limit=LIST_CHUNK, _request_timeout=COMPLETION_TIMEOUT)
        return [str(n.metadata.name) for n in resp.items]
    return _names(ctx, namespaces, incomplete)


class Duration(click.ParamType[int]):
    """A duration in seconds: 3600, 90s, 30m, 1h, 1h30m, 2d (each unit once, largest first)."""

    name = "duration"
    UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    MAX = 2**31 - 1  # the API's integer fields are int32

    def __init__(self, low: int = 0, high: int = MAX, bounds: str = ""):
        """`bounds`: how the error names the range [low, high] (e.g. "1s to 24h"), said the way
        the CRD states it, so a value the API server would refuse is refused here first."""
        self.low, self.high, self.bounds = low, high, bounds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        m = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
        if text.isdigit():
            seconds = int(text)
        elif text and m is not None:
            seconds = sum(int(n) * unit for n, unit in zip(m.groups(), self.UNITS.values(), strict=True) if n)
        else:
            self.fail(f"{value!r} is not a duration (3600, 90s, 30m, 1h, 1h30m, 2d)", param, ctx)
        if seconds > self.MAX:
            self.fail(f"{value!r} is too long (at most {self.MAX} seconds)", param, ctx)
        if not self.low <= seconds <= self.high:
            self.fail(f"{value!r} is out of range: from {self.bounds}", param, ctx)
        return seconds


DURATION = Duration()
DRAIN_DURATION = Duration(1, 86400, "1s to 24h")  # the CRD's spec.drainDeadlineSeconds
COOPERATIVE_DURATION = Duration(0, 3600, "0s to 1h")  # the CRD's spec.cooperativeSeconds

OUTPUT = click.option("-o", "--output", type=OutputFormat(), default="table", show_default=True,
                      help="Output format: table (the default view); wide (the records' table with more columns); "
                           "name (kind.group/name); json/yaml (the resource(s) as stored); jsonpath=TEMPLATE "
                           "(kubectl's templates). All but table print only the record(s) on stdout.")


