"""necrocode: cancel NecroCode jobs and tasks from a terminal, the way kubectl works.

The CLI only asks and shows: it creates JobCancellation/TaskCancellation resources (exactly
what `kubectl apply` would) and reads their status; the operator does the work. It talks to
the API server with the official synchronous client, and parses status with the pydantic
models of `necrocode.model` (the only module of the package it imports).

Also installed as `kubectl-necrocode`, so `kubectl necrocode job cancel ...` works.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import click
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from necrocode.model import (
    ANNOTATION_REQUESTER,
    API_VERSION,
    GROUP,
    JOB_CANCELLATION,
    LABEL_JOB,
    LABEL_TASK,
    PLURAL,
    TASK_CANCELLATION,
    TERMINAL_PHASES,
    VERSION,
    CancellationResult,
    CancellationStatus,
    Phase,
    RunnerOutcome,
    StepState,
    now_utc,
    parse_time,
)
from necrocode.naming import NAME_MAX, cancellation_labels, generate_name, label_ok

Obj = dict[str, Any]

# ----------------------------------------------------------------------------- exit codes
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

KINDS = (JOB_CANCELLATION, TASK_CANCELLATION)
POLL_SECONDS = 0.5
LIST_CHUNK = 500
REQUEST_TIMEOUT = (10, 60)  # connect, read


# ----------------------------------------------------------------------------- errors
class CliError(Exception):
    """A one-line error on stderr ("error: ...") and a documented exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {terminal_safe(self.message)}", file=file or sys.stderr)


@dataclass(frozen=True)
class ApiCall:
    """What a request was, to name it in an error: verb, resource (plural.group), namespace."""

    verb: str
    resource: str
    namespace: str | None = None
    name: str | None = None


def _where(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "across all namespaces"


def _body(exc: ApiException) -> Obj | None:
    try:
        body = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def map_api_error(exc: ApiException, call: ApiCall, server: str = "") -> CliError:
    """Turn an API answer into the one-line error and exit code the CLI documents."""
    status = int(exc.status or 0)
    body = _body(exc)
    message = str((body or {}).get("message") or exc.reason or "").strip()
    if status == 0:
        return CliError(f"cannot reach the cluster at {server or 'the API server'}: {exc.reason}", EXIT_UNREACHABLE)
    if status == 404:
        group_resource = call.resource.endswith("." + GROUP)
        # a list answers 404 only when the resource type is unknown; a get of a missing type
        # answers a plain "404 page not found" instead of a Status naming the object
        missing_type = call.verb == "list" or body is None or not (body.get("details") or {}).get("name")
        if group_resource and missing_type:
            return CliError(f"the {GROUP} CRDs are not installed in this cluster (kubectl apply -f crds/)",
                            EXIT_NOT_FOUND)
        what = call.resource.split(".", 1)[0].rstrip("s")
        return CliError(f"{what} {call.name} not found {_where(call.namespace)}", EXIT_NOT_FOUND)
    if status == 403:
        user = re.search(r'User "([^"]*)"', message)
        who = f'user "{user.group(1)}"' if user else "user"
        return CliError(f"forbidden: {who} cannot {call.verb} {call.resource} {_where(call.namespace)}",
                        EXIT_FORBIDDEN)
    if status == 401:
        return CliError(f"unauthorized: the cluster at {server or 'the API server'} did not accept the credentials "
                        "(check the kubeconfig user)", EXIT_FORBIDDEN)
    if status == 410:
        return CliError("the continue token has expired; list again from the start", EXIT_USAGE)
    if status in (400, 422):
        return CliError(f"the API server refused the request: {message}", EXIT_USAGE)
    return CliError(f"{call.verb} {call.resource} failed: {status} {exc.reason}: {message}".rstrip(": "), EXIT_ERROR)


def unreachable_error(exc: BaseException, server: str) -> CliError:
    reason: Any = getattr(exc, "reason", None) or exc
    text = str(reason)
    if "refused" in text.lower():
        text = "connection refused"
    elif "timed out" in text.lower() or "timeout" in text.lower():
        text = "connection timed out"
    elif isinstance(reason, urllib3.exceptions.SSLError) or "ssl" in text.lower():
        text = "TLS handshake failed (check the kubeconfig's certificate-authority)"
    else:
        text = re.sub(r"\s+", " ", text)[:200]
    return CliError(f"cannot reach the cluster at {server or 'the API server'}: {text}", EXIT_UNREACHABLE)


def map_exception(exc: BaseException, server: str = "") -> CliError:
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ApiException):
        return map_api_error(exc, ApiCall("call", "the API"), server)
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError):
        return unreachable_error(exc, server)
    if isinstance(exc, ConfigException):
        return CliError(f"no usable kubeconfig: {exc} (set KUBECONFIG or pass --kubeconfig)", EXIT_UNREACHABLE)
    return CliError(f"unexpected {type(exc).__name__}: {exc}", EXIT_ERROR)


# ----------------------------------------------------------------------------- connection
@dataclass
class Conn:
    api: client.ApiClient
    custom: client.CustomObjectsApi
    namespace: str
    server: str
    kubeconfig: str | None
    context: str | None
    prog: str = "necrocode"

    @contextlib.contextmanager
    def call(self, verb: str, plural: str, namespace: str | None, name: str | None = None) -> Iterator[None]:
        resource = plural if "." in plural else f"{plural}.{GROUP}"
        try:
            yield
        except ApiException as exc:
            raise map_api_error(exc, ApiCall(verb, resource, namespace, name), self.server) from None
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise unreachable_error(exc, self.server) from None

    # -------------------------------------------------------------- custom objects
    def get(self, plural: str, ns: str, name: str) -> Obj:
        with self.call("get", plural, ns, name):
            obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name,
                                                                _request_timeout=REQUEST_TIMEOUT)
        return dict(obj)

    def list_objs(self, plural: str, ns: str | None, *, selector: str | None = None, limit: int | None = None,
             cont: str | None = None) -> tuple[list[Obj], str | None]:
        kw: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT}
        if selector:
            kw["label_selector"] = selector
        if limit:
            kw["limit"] = limit
        if cont:
            kw["_continue"] = cont
        resp: Any
        with self.call("list", plural, ns):
            if ns is None:
                resp = self.custom.list_cluster_custom_object(GROUP, VERSION, plural, **kw)
            else:
                resp = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural, **kw)
        return list(resp.get("items") or []), (resp.get("metadata") or {}).get("continue") or None

    def list_all(self, plural: str, ns: str | None, selector: str | None = None) -> list[Obj]:
        out: list[Obj] = []
        cont: str | None = None
        while True:
            items, cont = self.list_objs(plural, ns, selector=selector, limit=LIST_CHUNK, cont=cont)
            out.extend(items)
            if not cont:
                return out

    def create(self, plural: str, ns: str, body: Obj) -> Obj:
        with self.call("create", plural, ns, body["metadata"]["name"]):
            obj: Any = self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body,
                                                                   _request_timeout=REQUEST_TIMEOUT)
        return dict(obj)

    def whoami(self) -> str | None:
        """The current user, from a SelfSubjectReview; None when the server cannot tell."""
        try:
            review: Any = client.AuthenticationV1Api(self.api).create_self_subject_review(
                client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"),
                _request_timeout=(5, 10))
            name = review.status.user_info.username
        except Exception:  # best effort: older servers, RBAC, anything
            return None
        return str(name)[:NAME_MAX] if name else None


def connect(kubeconfig: str | None, context: str | None, namespace: str | None, prog: str) -> Conn:
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    cfg = client.Configuration()
    try:
        list_contexts: Any = config.list_kube_config_contexts
        contexts, active = list_contexts(config_file=path)
        if context and context not in {c.get("name") for c in contexts}:
            raise CliError(f'context "{context}" not found in the kubeconfig', EXIT_UNREACHABLE)
        load: Any = config.load_kube_config
        load(config_file=path, context=context, client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, yaml.YAMLError) as exc:
        raise map_exception(exc if isinstance(exc, ConfigException) else ConfigException(str(exc))) from None
    current = next((c for c in contexts if c.get("name") == context), None) if context else active
    ns = namespace or ((current or {}).get("context") or {}).get("namespace") or "default"
    cfg.retries = 2
    api = client.ApiClient(cfg)
    return Conn(api=api, custom=client.CustomObjectsApi(api), namespace=ns, server=str(cfg.host),
                kubeconfig=kubeconfig, context=context, prog=prog)


# ----------------------------------------------------------------------------- parsing and formatting
def result_of(obj: Obj) -> CancellationResult:
    return CancellationResult.from_object(obj)


def is_terminal(obj: Obj) -> bool:
    return result_of(obj).status.phase in TERMINAL_PHASES


def created_at(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


def newest_first(items: list[Obj]) -> list[Obj]:
    """By creationTimestamp, newest first; ties (one-second resolution) by name, descending,
    which for generated names (…-cancel-<yyyymmddhhmmss>-…) is newest first as well."""
    return sorted(items, key=lambda o: (created_at(o), (o.get("metadata") or {}).get("name") or ""), reverse=True)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s" if seconds % 1 else f"{int(seconds)}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def span(start: str | None, end: str | None) -> float | None:
    t0 = parse_time(start)
    if t0 is None:
        return None
    t1 = parse_time(end) or now_utc()
    return (t1 - t0).total_seconds()


def started_of(obj: Obj) -> str | None:
    st = obj.get("status") or {}
    return st.get("startedAt") or created_at(obj) or None


def runners_text(st: CancellationStatus) -> str:
    p = st.progress
    text = f"{p.runners_terminated}/{p.runners_total}"
    return text + (f" ({p.runners_forced} forced)" if p.runners_forced else "")


def kind_ref(r: CancellationResult) -> str:
    return f"{r.kind.lower()}/{r.name}"


# C0 and C1 controls, DEL, and the invisible characters that reorder or break lines (bidi
# overrides and isolates, line and paragraph separators)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def terminal_safe(text: str) -> str:
    """`text` with its control characters written as escapes (\\x1b, \\n, \\u202e). Reasons,
    messages, names, requesters and errors come from the cluster, where anyone who may create a
    cancellation chose them: written raw, an ESC sequence or a carriage return could clear the
    screen or rewrite the lines above. Applied where human output is printed (never to -o
    json/yaml, which print the stored values, escaped by their own syntax)."""
    return _CONTROL.sub(_escape, text)


def safe_block(lines: Sequence[str]) -> str:
    """Lines of human output, each made terminal-safe, joined."""
    return "\n".join(terminal_safe(ln) for ln in lines)


def requester_text(obj: Obj, short: bool = False) -> str:
    """Who asked: the user the API server recorded (annotation necrocode.io/requester), else
    the client's own claim (spec.requestedBy), marked as such; '-' when neither is there."""
    recorded = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_REQUESTER)
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    verified = status.get("requesterVerified")
    if isinstance(recorded, str) and recorded and verified is not False:  # False: the operator trusts no annotation
        return recorded if short or verified is not True else f"{recorded} (recorded by the API server)"
    claimed = status.get("requestedBy") or spec.get("requestedBy")
    if not claimed:
        return "-"
    return f"{claimed}?" if short else f"{claimed} (unverified: the client's claim)"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    rows = [[terminal_safe(c) for c in row] for row in rows]  # before measuring: an escape is wider
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        lines.append(indent + "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def capped(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def emit_document(doc: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(doc, indent=2, sort_keys=False))
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n"))


def as_list(items: list[Obj], cont: str | None = None) -> Obj:
    meta: Obj = {}
    if cont:
        meta["continue"] = cont
    return {"apiVersion": "v1", "kind": "List", "metadata": meta, "items": items}


# ----------------------------------------------------------------------------- views
STEP_MARK = {StepState.PENDING: "[ ]", StepState.RUNNING: "[>]", StepState.SUCCEEDED: "[x]",
             StepState.FAILED: "[!]", StepState.SKIPPED: "[-]"}


def progress_facts(r: CancellationResult) -> list[tuple[str, str]]:
    """The live facts of a cancellation, as (key, text); a plain-output line is printed when
    a key's text changes."""
    st, p = r.status, r.status.progress
    phase = ("phase", f"phase {st.phase.value}" + (f": {st.message}" if st.message else ""))
    facts: list[tuple[str, str]] = [] if st.terminal else [phase]
    for s in st.steps:
        if s.state == StepState.PENDING:
            continue
        text = f"step {s.name}: {s.state.value}"
        if s.state in (StepState.SUCCEEDED, StepState.FAILED):
            text += f" ({fmt_duration(span(s.started_at, s.finished_at))})"
        if s.message:
            text += f" - {s.message}"
        facts.append((f"step/{s.name}", text))
    if p.runners_total or p.runners_terminated:
        facts.append(("runners", f"runners terminated {runners_text(st)}"))
    if p.tasks_cancelled or p.tasks_blocked:
        facts.append(("tasks", f"tasks cancelled {p.tasks_cancelled}" +
                      (f", blocked {p.tasks_blocked}" if p.tasks_blocked else "")))
    if p.leases_released:
        facts.append(("leases", f"leases released {p.leases_released}"))
    if p.resources_deleted or p.artifacts_preserved:
        facts.append(("resources", f"resources cleaned {p.resources_deleted} deleted, {p.artifacts_preserved} kept"))
    for e in st.errors:
        facts.append((f"error/{e.step}/{e.object}", f"error in {e.step} on {e.object} "
                                                    f"(attempt {e.attempts}): {e.message}"))
    return facts + ([phase] if st.terminal else [])


def bar(done: int, total: int, width: int = 20) -> str:
    if total <= 0:
        return ""
    n = min(width, round(width * done / total))
    return "[" + "#" * n + "-" * (width - n) + "]"


def live_block(r: CancellationResult, obj: Obj) -> list[str]:
    """The small block redrawn on a terminal while a cancellation runs."""
    st, p = r.status, r.status.progress
    what = f"job {r.job_name}" + (f" task {r.task_id}" if r.task_id else "")
    elapsed = fmt_duration(span(started_of(obj), st.completed_at))
    lines = [f"{kind_ref(r)} ({what})  {st.phase.value}  {elapsed}"]
    if not st.steps:
        lines.append("  waiting for the operator to pick it up ...")
    for s in st.steps:
        dur = fmt_duration(span(s.started_at, s.finished_at)) if s.started_at else ""
        lines.append(f"  {STEP_MARK.get(s.state, '[?]')} {s.name:<18} {s.state.value:<9} {dur:>6}  {s.message or ''}".rstrip())
    lines.append(f"  runners terminated  {runners_text(st):<16} {bar(p.runners_terminated, p.runners_total)}".rstrip())
    lines.append(f"  tasks cancelled     {p.tasks_cancelled}" + (f" (blocked {p.tasks_blocked})" if p.tasks_blocked else ""))
    lines.append(f"  leases released     {p.leases_released}")
    lines.append(f"  resources cleaned   {p.resources_deleted} deleted, {p.artifacts_preserved} kept")
    if st.errors:
        lines.append(f"  errors              {len(st.errors)} (last: {st.errors[-1].object}: {st.errors[-1].message})")
    return lines


def summary(r: CancellationResult, obj: Obj) -> list[str]:
    """What a finished cancellation did: tasks, runners, resources, errors."""
    st = r.status
    spec = obj.get("spec") or {}
    lines = [f"{kind_ref(r)} in namespace {r.namespace}: {st.phase.value} in "
             f"{fmt_duration(span(started_of(obj), st.completed_at))}"]
    if st.message:
        lines.append(f"  {st.message}")
    if st.duplicate_of:
        lines.append(f"  duplicate of {st.duplicate_of}: that cancellation does the work")
    if spec.get("dryRun"):
        plan = st.plan
        lines.append("dry run: nothing was changed; it would act on")
        if plan is not None:
            lines.append(f"  runner pods   {capped(plan.runner_pods) or '-'}")
            lines.append(f"  leases        {capped(plan.leases) or '-'}")
            lines.append(f"  delete        {capped(plan.scratch_resources) or '-'}")
            lines.append(f"  keep          {capped(plan.artifacts) or '-'}")
    if st.affected_tasks:
        lines.append(f"affected tasks ({len(st.affected_tasks)}):")
        rows = [[a.task_id, a.before, a.after, a.runner or "-", a.reason] for a in st.affected_tasks[:50]]
        lines += table(["TASK", "BEFORE", "AFTER", "RUNNER", "REASON"], rows, indent="  ")
        if len(st.affected_tasks) > 50:
            lines.append(f"  ... and {len(st.affected_tasks) - 50} more (-o yaml shows all)")
    if st.progress.runners_total or st.runner_outcomes:
        forced = [o.pod for o in st.runner_outcomes if o.outcome == "Forced"]
        lines.append(f"runners terminated: {runners_text(st)}" + (f"; forced: {capped(forced)}" if forced else ""))
        outcomes = st.runner_outcomes[:50]
        cols: list[tuple[str, Callable[[RunnerOutcome], str]]] = [("POD", lambda o: o.pod),
                                                                   ("OUTCOME", lambda o: o.outcome)]
        if any(o.task for o in outcomes):
            cols.insert(1, ("TASK", lambda o: o.task or "-"))
        if any(o.seconds is not None for o in outcomes):
            cols.append(("TOOK", lambda o: fmt_duration(o.seconds)))
        if outcomes:
            lines += table([c[0] for c in cols], [[f(o) for _, f in cols] for o in outcomes], indent="  ")
    if st.cleanup is not None and any((st.cleanup.released, st.cleanup.deleted, st.cleanup.preserved,
                                       st.cleanup.failed)):
        lines.append("resources:")
        for label, items in (("released", st.cleanup.released), ("deleted", st.cleanup.deleted),
                             ("kept", st.cleanup.preserved), ("failed", st.cleanup.failed)):
            if items:
                lines.append(f"  {label:<9} {capped(items)}")
    if st.cascade_warnings:
        lines.append("warnings:")
        lines += [f"  {w}" for w in st.cascade_warnings]
    if st.errors:
        lines.append(f"errors ({len(st.errors)}):")
        lines += table(["STEP", "OBJECT", "ATTEMPTS", "MESSAGE"],
                       [[e.step, e.object, str(e.attempts), e.message] for e in st.errors], indent="  ")
    return lines


def status_view(r: CancellationResult, obj: Obj) -> list[str]:
    """cancel-status: phase, every step with state, duration and message, done/pending, errors."""
    st, spec = r.status, obj.get("spec") or {}
    lines = [f"{kind_ref(r)}  (namespace {r.namespace})"]
    target = f"{r.job_name}" + (f", task {r.task_id} ({'cascade' if spec.get('cascade', True) else 'no cascade'})"
                                if r.task_id else "")
    lines.append(f"  job:        {target}")
    lines.append(f"  phase:      {st.phase.value}" + (f" - {st.message}" if st.message else ""))
    if spec.get("reason"):
        lines.append(f"  reason:     {spec['reason']}")
    who = requester_text(obj)
    if who != "-":
        lines.append(f"  requested:  by {who}")
    flags = [k for k, v in (("force", spec.get("force")), ("dry run", spec.get("dryRun"))) if v]
    lines.append(f"  started:    {started_of(obj) or '-'}  (duration {fmt_duration(span(started_of(obj), st.completed_at))})"
                 + (f"  [{', '.join(flags)}]" if flags else ""))
    if st.duplicate_of:
        lines.append(f"  duplicate:  of {st.duplicate_of}")
    if st.steps:
        done = [s.name for s in st.steps if s.state in (StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED)]
        pending = [s.name for s in st.steps if s.name not in done]
        lines.append(f"  steps:      {len(done)}/{len(st.steps)} done" +
                     (f"; pending: {', '.join(pending)}" if pending else ""))
        rows = [[s.name, s.state.value, fmt_duration(span(s.started_at, s.finished_at)) if s.started_at else "-",
                 s.message or ""] for s in st.steps]
        lines += table(["STEP", "STATE", "DURATION", "MESSAGE"], rows, indent="    ")
    else:
        lines.append("  steps:      none yet (the operator has not picked it up)")
    p = st.progress
    lines.append(f"  progress:   runners {runners_text(st)}, tasks cancelled {p.tasks_cancelled}"
                 + (f" (blocked {p.tasks_blocked})" if p.tasks_blocked else "")
                 + f", leases released {p.leases_released}, resources {p.resources_deleted} deleted / "
                 f"{p.artifacts_preserved} kept")
    if st.errors:
        lines.append(f"  errors:     {len(st.errors)}")
        lines += table(["STEP", "OBJECT", "ATTEMPTS", "MESSAGE"],
                       [[e.step, e.object, str(e.attempts), e.message] for e in st.errors], indent="    ")
    return lines


class Display:
    """Live progress: on a terminal a block redrawn in place (ANSI cursor-up), otherwise one
    plain line per change."""

    def __init__(self, stream: IO[str], tty: bool, block: Callable[[CancellationResult, Obj], list[str]]):
        self.stream, self.tty, self.block = stream, tty, block
        self.drawn = 0
        self.seen: dict[tuple[str, str], str] = {}
        self.t0 = time.monotonic()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(self, objs: list[Obj]) -> None:
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            lines = [terminal_safe(ln)[:width] for o in objs for ln in self.block(result_of(o), o)]
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self._write(up + "\x1b[J" + "".join(ln + "\n" for ln in lines))
            self.drawn = len(lines)
            return
        out = []
        for o in objs:
            r = result_of(o)
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
        if all(is_terminal(o) for o in objs):
            return objs
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise WaitTimeout(objs)
        time.sleep(POLL_SECONDS if remaining is None else min(POLL_SECONDS, remaining))
        objs = [conn.get(PLURAL[o["kind"]], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs]


def exit_code_of(objs: list[Obj]) -> int:
    """The worst phase among the followed cancellations decides the exit code."""
    codes = [PHASE_EXIT.get(result_of(o).status.phase, EXIT_OK) for o in objs]
    return max(codes, default=EXIT_OK)


def follow_hint(conn: Conn, job: str, ns: str) -> str:
    extra = (f" --context {conn.context}" if conn.context else "") + (
        f" --kubeconfig {conn.kubeconfig}" if conn.kubeconfig else "")
    return f"{conn.prog} job cancel-status {job} -n {ns} --watch{extra}"


def watch_and_report(conn: Conn, objs: list[Obj], *, job: str, ns: str, timeout: float | None, output: str,
                     view: Callable[[CancellationResult, Obj], list[str]],
                     final: Callable[[CancellationResult, Obj], list[str]] | None) -> NoReturn:
    """Follow cancellations live, then print the result; exits with the documented code."""
    machine = output in ("json", "yaml")
    stream = sys.stderr if machine else sys.stdout
    tty = stream.isatty() and os.environ.get("TERM") != "dumb"
    display = Display(stream, tty, view)
    try:
        objs = follow(conn, objs, timeout, display.update)
    except KeyboardInterrupt:
        display.clear()
        click.echo(f"\nstill running; follow it with: {follow_hint(conn, job, ns)}", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except WaitTimeout as exc:
        phase = result_of(exc.objs[0]).status.phase.value if exc.objs else "?"
        names = ", ".join(f"{o['kind'].lower()}/{o['metadata']['name']}" for o in exc.objs)
        raise CliError(f"timed out after {fmt_duration(timeout)} waiting for {names} (phase {phase}); it goes on, "
                       f"follow it with: {follow_hint(conn, job, ns)}", EXIT_TIMEOUT) from None
    if tty:
        display.clear()
    if machine:
        emit_document(objs[0] if len(objs) == 1 and final is not None else as_list(objs), output)
    else:
        blocks = [(final or view)(result_of(o), o) for o in objs]
        click.echo("\n\n".join(safe_block(b) for b in blocks))
    raise click.exceptions.Exit(exit_code_of(objs))


# ----------------------------------------------------------------------------- click plumbing
def prog_name(ctx: click.Context) -> str:
    root = ctx.find_root().info_name or "necrocode"
    return "kubectl necrocode" if "kubectl" in root else "necrocode"


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


@dataclass
class Globals:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--kubeconfig, --context and -n/--namespace, accepted on every command (kubectl-style)."""
    f = click.option("-n", "--namespace", default=None, metavar="NS",
                     help="Namespace (default: the context's namespace, else 'default').")(f)
    f = click.option("--context", default=None, metavar="NAME", help="kubeconfig context to use.")(f)
    f = click.option("--kubeconfig", default=None, metavar="PATH", type=click.Path(dir_okay=False),
                     help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")(f)
    return f


def open_conn(ctx: click.Context, kubeconfig: str | None, context: str | None, namespace: str | None) -> Conn:
    g: Globals = ctx.find_object(Globals) or Globals()
    return connect(kubeconfig or g.kubeconfig, context or g.context, namespace or g.namespace, prog_name(ctx))


def check_crds(conn: Conn, ns: str | None) -> None:
    """A list of each kind (limit 1): a 404 here means the CRDs are not installed."""
    for plural in PLURAL.values():
        conn.list_objs(plural, ns, limit=1)


OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
                      show_default=True, help="Output format; json/yaml print the resource(s) as stored.")


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


@job.command(epilog=EXIT_CODES_HELP)
@click.argument("job_id", metavar="JOB-ID")
@click.option("--reason", default="", metavar="TEXT", help="Why; recorded on every task and event.")
@click.option("--force", is_flag=True, help="Delete runner pods at once (grace period 0).")
@click.option("--grace-period", type=click.IntRange(0, 3600), default=None, metavar="SECONDS",
              help="Grace each runner pod gets to stop (operator default: 30).")
@click.option("--task", "task_id", default=None, metavar="TASK-ID", help="Cancel only this task (a TaskCancellation).")
@click.option("--no-cascade", is_flag=True, help="With --task: block the task's dependents instead of cancelling them.")
@click.option("--dry-run", is_flag=True, help="Ask the operator what it would do; change nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the cancellation until it finishes.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Stop waiting after this long (exit 6); the cancellation goes on. Default: no limit.")
@OUTPUT
@connection_options
@click.pass_context
def cancel(ctx: click.Context, job_id: str, reason: str, force: bool, grace_period: int | None, task_id: str | None,
           no_cascade: bool, dry_run: bool, wait: bool, timeout: float | None, output: str,
           kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Cancel job JOB-ID (or, with --task, one task) and follow it live.

    Creates a JobCancellation (a TaskCancellation with --task) with a generated name; the
    operator does the work. By default it then shows each step, runners terminated (and
    forced), tasks cancelled, leases released and resources cleaned, and at the end what
    was affected, forced, released, deleted and kept. Ctrl-C stops watching, never the
    cancellation. Without a terminal it prints one plain line per change.

    \b
    Examples:
      necrocode job cancel job1 --reason "budget exceeded"
      necrocode job cancel job1 --force --no-wait
      necrocode job cancel job1 --grace-period 60 --timeout 120
      necrocode job cancel job1 --task t3 --no-cascade
      necrocode job cancel job1 --dry-run -o yaml
    """
    if no_cascade and not task_id:
        raise click.UsageError("--no-cascade needs --task", ctx)
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait", ctx)
    conn = open_conn(ctx, kubeconfig, context, namespace)
    ns = conn.namespace
    kind = TASK_CANCELLATION if task_id else JOB_CANCELLATION
    plural = PLURAL[kind]

    # validate before creating anything
    check_crds(conn, ns)
    try:
        conn.get("agentjobs", ns, job_id)
    except CliError as exc:
        if exc.exit_code == EXIT_NOT_FOUND and "CRDs" not in exc.message:
            raise CliError(f"job {job_id} not found in namespace {ns}", EXIT_NOT_FOUND) from None
        raise
    if task_id:
        selector = f"{LABEL_JOB}={job_id},{LABEL_TASK}={task_id}" if label_ok(job_id) and label_ok(task_id) else None
        tasks = conn.list_all("agenttasks", ns, selector) if selector else []
        if not tasks:
            raise CliError(f"task {task_id} of job {job_id} not found in namespace {ns}", EXIT_NOT_FOUND)

    spec: Obj = {"jobName": job_id}
    if reason:
        spec["reason"] = reason
    user = conn.whoami()
    if user:
        spec["requestedBy"] = user
    if force:
        spec["force"] = True
    if grace_period is not None:
        spec["gracePeriodSeconds"] = grace_period
    if dry_run:
        spec["dryRun"] = True
    if task_id:
        spec["taskId"] = task_id
        spec["cascade"] = not no_cascade
    labels = cancellation_labels(job_id, task_id)
    body: Obj = {"apiVersion": API_VERSION, "kind": kind,
                 "metadata": {"name": generate_name(job_id, task_id), "labels": labels}, "spec": spec}
    obj = conn.create(plural, ns, body)
    name = obj["metadata"]["name"]
    machine = output in ("json", "yaml")
    click.echo(f"{kind.lower()}.{GROUP}/{name} created" + (" (dry run)" if dry_run else ""), err=machine)
    if not wait:
        if machine:
            emit_document(obj, output)
        else:
            click.echo(f"follow it with: {follow_hint(conn, job_id, ns)}")
        return
    watch_and_report(conn, [obj], job=job_id, ns=ns, timeout=timeout, output=output, view=live_block, final=summary)


def latest_cancellations(conn: Conn, job_id: str, ns: str) -> list[Obj]:
    """The newest cancellation of the job, and any other that is still going on."""
    selector = f"{LABEL_JOB}={job_id}" if label_ok(job_id) else None
    found: list[Obj] = []
    for plural in PLURAL.values():
        items = conn.list_all(plural, ns, selector)
        found += [o for o in items if (o.get("spec") or {}).get("jobName") == job_id]
    found = newest_first(found)
    if not found:
        return []
    return [found[0]] + [o for o in found[1:] if not is_terminal(o)]


@job.command("cancel-status", epilog=EXIT_CODES_HELP)
@click.argument("job_id", metavar="JOB-ID")
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
    conn = open_conn(ctx, kubeconfig, context, namespace)
    ns = conn.namespace
    objs = latest_cancellations(conn, job_id, ns)
    if not objs:
        check_crds(conn, ns)
        raise CliError(f"no cancellations found for job {job_id} in namespace {ns}", EXIT_NOT_FOUND)
    if watch:
        watch_and_report(conn, objs, job=job_id, ns=ns, timeout=timeout, output=output, view=status_view, final=None)
    if output in ("json", "yaml"):
        emit_document(as_list(objs), output)
        return
    click.echo("\n\n".join(safe_block(status_view(result_of(o), o)) for o in objs))


# ----------------------------------------------------------------------------- listing
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
        items = [o for plural in PLURAL.values() for o in conn.list_all(plural, ns, selector)]
        return items, None
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


@job.command("cancellations", epilog=EXIT_CODES_HELP)
@click.option("--limit", type=click.IntRange(1, 10000), default=None, metavar="N",
              help="At most N per page (the API's limit); prints a --continue token for the next page.")
@click.option("--continue", "token", default=None, metavar="TOKEN", help="Next page, from the token of the last one.")
@click.option("--job", "job_filter", default=None, metavar="JOB", help="Only this job's cancellations.")
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
    conn = open_conn(ctx, kubeconfig, context, namespace)
    ns = None if all_namespaces else conn.namespace
    if job_filter and not label_ok(job_filter):
        raise click.BadParameter(f"{job_filter!r} is not a job name", param_hint="--job")
    selector = f"{LABEL_JOB}={job_filter}" if job_filter else None
    items, next_token = list_page(conn, ns, selector, limit, token)
    if phase:
        items = [o for o in items if result_of(o).status.phase.value.lower() == phase.lower()]
    items = newest_first(items)
    if output in ("json", "yaml"):
        emit_document(as_list(items, next_token), output)
    else:
        rows = []
        for o in items:
            r, spec = result_of(o), o.get("spec") or {}
            st = r.status
            row = [r.name, r.kind, r.job_name, r.task_id or "-", requester_text(o, short=True), st.phase.value,
                   runners_text(st) if st.steps else "-", started_of(o) or "-",
                   fmt_duration(span(started_of(o), st.completed_at)), str(spec.get("reason") or "")[:60]]
            rows.append(([r.namespace] if ns is None else []) + row)
        headers = (["NAMESPACE"] if ns is None else []) + ["NAME", "KIND", "JOB", "TASK", "REQUESTER", "PHASE",
                                                           "RUNNERS", "STARTED", "DURATION", "REASON"]
        if rows:
            click.echo("\n".join(table(headers, rows)))
        else:
            click.echo(f"no cancellations found {_where(ns)}", err=True)
    if next_token and output == "table":
        more = f"{conn.prog} job cancellations --limit {limit} --continue {next_token}"
        click.echo(f"more: {more}", err=True)


def main() -> None:
    cli.main(prog_name="kubectl necrocode" if "kubectl" in os.path.basename(sys.argv[0]) else "necrocode")


if __name__ == "__main__":
    main()
