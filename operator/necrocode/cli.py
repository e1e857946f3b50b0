"""necrocode: cancel NecroCode jobs and tasks from a terminal, the way kubectl works.

The CLI only asks and shows: it creates JobCancellation/TaskCancellation resources (exactly
what `kubectl apply` would) and reads their status; the operator does the work. It talks to
the API server with the official synchronous client, parses status with the pydantic models
of `necrocode.model`, and orders, filters and finds records and tasks with `necrocode.records`,
the model it shares with the REST API (it imports only pure modules of the package).

Also installed as `kubectl-necrocode`, so `kubectl necrocode job cancel ...` works.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import click
import urllib3
import yaml
from click.shell_completion import CompletionItem, get_completion_class
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from necrocode import jsonpath, records
from necrocode.model import (
    ANNOTATION_FORCE_REQUESTER,
    ANNOTATION_REQUESTER,
    API_VERSION,
    FINISHED_JOB_PHASES,
    GROUP,
    JOB_CANCELLATION,
    LABEL_JOB,
    PLURAL,
    TASK_CANCELLATION,
    TERMINAL_PHASES,
    VERSION,
    CancellationResult,
    CancellationStatus,
    Phase,
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
    as_user: str | None = None
    as_groups: tuple[str, ...] = ()

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

    def escalate(self, obj: Obj, user: str | None) -> Obj | None:
        """Turn spec.force on in a cancellation running gracefully (the one change of a spec the
        CRD allows): the operator forces what is left at once. None when it cannot be: it ended
        or went meanwhile (the CRD refuses, 404), or RBAC grants no patch (a new forced request
        then escalates it instead)."""
        meta, plural = obj["metadata"], PLURAL[obj["kind"]]
        patch: Obj = {"spec": {"force": True}}
        if user:  # a claim: the API server records who sent it (deploy/requester-policy.yaml)
            patch["metadata"] = {"annotations": {ANNOTATION_FORCE_REQUESTER: user}}
        try:
            out: Any = self.custom.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], plural,
                                                                  meta["name"], patch, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status in (403, 404, 409, 422):
                return None
            raise map_api_error(exc, ApiCall("patch", f"{plural}.{GROUP}", meta["namespace"], meta["name"]),
                                self.server) from None
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise unreachable_error(exc, self.server) from None
        return dict(out)

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


SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_SECONDS = 60.0  # a projected token is rotated by the kubelet; client-go re-reads it each minute


@dataclass(frozen=True)
class InCluster:
    """The pod's own identity: the API server from KUBERNETES_SERVICE_HOST/PORT, the
    ServiceAccount token and CA of the serviceaccount directory, its namespace."""

    host: str
    token_file: str
    ca_file: str | None
    namespace: str


def in_cluster(env: Mapping[str, str], sa_dir: str) -> InCluster | None:
    """The in-cluster configuration, when this runs in a pod (the service's host and port are
    set and the token file exists); None otherwise. The namespace: $POD_NAMESPACE, else the
    serviceaccount's namespace file, else 'default' (as kubectl)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = os.path.join(sa_dir, "token")
    if not host or not port or not os.path.isfile(token):
        return None
    ca = os.path.join(sa_dir, "ca.crt")
    ns = env.get("POD_NAMESPACE") or ""
    if not ns:
        with contextlib.suppress(OSError):
            with open(os.path.join(sa_dir, "namespace"), encoding="utf-8") as f:
                ns = f.read().strip()
    joined = f"[{host}]:{port}" if ":" in host or "%" in host else f"{host}:{port}"
    return InCluster(host=f"https://{joined}", token_file=token, ca_file=ca if os.path.isfile(ca) else None,
                     namespace=ns or "default")


def config_source(kubeconfig: str | None, env: Mapping[str, str], home: str, sa_dir: str) -> str | InCluster | None:
    """Where the connection comes from, in kubectl's order: --kubeconfig (which must exist);
    else $KUBECONFIG (a list: the files of it that exist); else ~/.kube/config; else, when none
    of these files exists, the in-cluster configuration. None: no configuration at all."""
    if kubeconfig:
        return kubeconfig
    listed = env.get("KUBECONFIG") or ""
    candidates = [p for p in listed.split(os.pathsep) if p] if listed else [os.path.join(home, ".kube", "config")]
    if any(os.path.exists(os.path.expanduser(p)) for p in candidates):
        return listed or candidates[0]
    return in_cluster(env, sa_dir)


def use_in_cluster(cfg: client.Configuration, source: InCluster) -> None:
    """Point `cfg` at the in-cluster API server with the ServiceAccount token, re-read from its
    file when older than TOKEN_REREAD_SECONDS (the kubelet rotates it)."""
    cfg.host = source.host
    if source.ca_file:
        cfg.ssl_ca_cert = source.ca_file
    read_at = [-math.inf]

    def refresh(c: client.Configuration) -> None:
        if time.monotonic() - read_at[0] < TOKEN_REREAD_SECONDS:
            return
        try:
            with open(source.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError:
            token = ""
        if token:  # a failed read keeps the last token
            c.api_key["BearerToken"] = f"Bearer {token}"
            read_at[0] = time.monotonic()

    refresh(cfg)
    if "BearerToken" not in cfg.api_key:
        raise CliError(f"no usable in-cluster configuration: cannot read the token {source.token_file}",
                       EXIT_UNREACHABLE)
    cfg.refresh_api_key_hook = refresh  # type: ignore[assignment]  # typed None, called when set


class Impersonating:
    """The client's urllib3 pool manager, sending kubectl's impersonation headers on every
    request: Impersonate-User, and one Impersonate-Group header per group (the client's own
    default headers are a dict, which cannot repeat a header)."""

    def __init__(self, pool: Any, user: str, groups: Sequence[str]):
        self.pool, self.user, self.groups = pool, user, tuple(groups)

    def request(self, method: str, url: str, **kw: Any) -> Any:
        headers = urllib3.HTTPHeaderDict(kw.pop("headers", None) or {})
        for name in [h for h in headers if h.lower().startswith("impersonate-")]:
            del headers[name]
        headers["Impersonate-User"] = self.user
        for group in self.groups:
            headers.add("Impersonate-Group", group)
        return self.pool.request(method, url, headers=headers, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


def connect(kubeconfig: str | None, context: str | None, namespace: str | None, prog: str, *,
            as_user: str | None = None, as_groups: Sequence[str] = (), sa_dir: str | None = None) -> Conn:
    source = config_source(kubeconfig, os.environ, os.path.expanduser("~"), sa_dir or SERVICEACCOUNT_DIR)
    cfg = client.Configuration()
    if isinstance(source, InCluster):
        if context:
            raise CliError(f'context "{context}" not found: there is no kubeconfig (in-cluster configuration)',
                           EXIT_UNREACHABLE)
        use_in_cluster(cfg, source)
        ns = namespace or source.namespace
    else:
        if source is None:
            raise CliError("no usable kubeconfig: no kubeconfig file ($KUBECONFIG, ~/.kube/config) and not in a pod "
                           "(KUBERNETES_SERVICE_HOST, a ServiceAccount token) (set KUBECONFIG or pass --kubeconfig)",
                           EXIT_UNREACHABLE)
        try:
            list_contexts: Any = config.list_kube_config_contexts
            contexts, active = list_contexts(config_file=source)
            if context and context not in {c.get("name") for c in contexts}:
                raise CliError(f'context "{context}" not found in the kubeconfig', EXIT_UNREACHABLE)
            load: Any = config.load_kube_config
            load(config_file=source, context=context, client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, yaml.YAMLError) as exc:
            raise map_exception(exc if isinstance(exc, ConfigException) else ConfigException(str(exc))) from None
        current = next((c for c in contexts if c.get("name") == context), None) if context else active
        ns = namespace or ((current or {}).get("context") or {}).get("namespace") or "default"
    cfg.retries = 2
    api = client.ApiClient(cfg)
    if as_user:
        api.rest_client.pool_manager = Impersonating(  # type: ignore[assignment]  # a wrapper of it
            api.rest_client.pool_manager, as_user, as_groups)
    return Conn(api=api, custom=client.CustomObjectsApi(api), namespace=ns, server=str(cfg.host),
                kubeconfig=kubeconfig, context=context, prog=prog, as_user=as_user,
                as_groups=tuple(as_groups) if as_user else ())


# ----------------------------------------------------------------------------- parsing and formatting
def result_of(obj: Obj) -> CancellationResult:
    return CancellationResult.from_object(obj)


def is_terminal(obj: Obj) -> bool:
    return result_of(obj).status.phase in TERMINAL_PHASES


def created_at(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


newest_first = records.newest_first  # the order the REST API lists in too


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


# Colour, on a terminal only: the phase, wherever a view shows it
PHASE_COLOUR: dict[str, str] = {Phase.COMPLETED: "32", Phase.PARTIALLY_COMPLETED: "33", Phase.FAILED: "31",
                                 Phase.REJECTED: "31", Phase.RUNNING: "36"}  # green, yellow, red, red, cyan


def interactive(stream: Any) -> bool:
    """Whether `stream` is a terminal that takes ANSI sequences: a TTY whose TERM is not 'dumb'.
    Anything else (a pipe, a file, CI) gets plain text without a single control sequence."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


def coloured(stream: Any) -> bool:
    """Colour as well: on a terminal, unless NO_COLOR is set to anything (no-color.org)."""
    return interactive(stream) and not os.environ.get("NO_COLOR")


class Painted(str):
    """A line of human output that shows a phase: `before`, the phase, `after`. It reads as
    the plain line; `paint` colours the phase on a terminal."""

    before: str
    phase: str
    after: str

    def __new__(cls, before: str, phase: str, after: str = "") -> Painted:
        line = super().__new__(cls, before + phase + after)
        line.before, line.phase, line.after = before, phase, after
        return line


def paint(line: str, colour: bool, width: int | None = None) -> str:
    """A line as printed: terminal-safe, cut to `width`, and with `colour` its phase coloured
    (the only escape sequence the CLI adds to a line, never written to anything but a terminal)."""
    if not (colour and isinstance(line, Painted) and line.phase in PHASE_COLOUR):
        text = terminal_safe(line)
        return text if width is None else text[:width]
    before, after = terminal_safe(line.before), terminal_safe(line.after)
    if width is not None:
        if len(before) + len(line.phase) > width:
            return (before + line.phase + after)[:width]
        after = after[:width - len(before) - len(line.phase)]
    return f"{before}\x1b[{PHASE_COLOUR[line.phase]}m{line.phase}\x1b[0m{after}"


def safe_block(lines: Sequence[str], colour: bool = False) -> str:
    """Lines of human output, each made terminal-safe (and with `colour`, its phase coloured), joined."""
    return "\n".join(paint(ln, colour) for ln in lines)


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


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "",
          phase_col: int | None = None) -> list[str]:
    """Aligned columns; the rows' cells in column `phase_col` are phases (Painted lines)."""
    rows = [[terminal_safe(c) for c in row] for row in rows]  # before measuring: an escape is wider
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines: list[str] = []
    for i, row in enumerate((headers, *rows)):
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        line = indent + "   ".join(cells).rstrip()
        if i and phase_col is not None:
            before = indent + "".join(c + "   " for c in cells[:phase_col])
            line = Painted(before, row[phase_col], line[len(before) + len(row[phase_col]):])
        lines.append(line)
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


def record_ref(obj: Obj) -> str:
    """kind.group/name, as `kubectl get -o name` prints it."""
    return f"{str(obj.get('kind') or JOB_CANCELLATION).lower()}.{GROUP}/{(obj.get('metadata') or {}).get('name')}"


def record_table(items: list[Obj], *, namespaces: bool, wide: bool = False) -> list[str]:
    """The records as `job cancellations` shows them; `wide` (-o wide) adds the progress counts,
    force, grace period, TTL and the status message."""
    rows = []
    for o in items:
        r, spec = result_of(o), o.get("spec") or {}
        st, p = r.status, r.status.progress
        row = [r.name, r.kind, r.job_name, r.task_id or "-", requester_text(o, short=True), st.phase.value,
               runners_text(st) if st.steps else "-", started_of(o) or "-",
               fmt_duration(span(started_of(o), st.completed_at))]
        if wide:
            row += [str(p.tasks_cancelled), str(p.tasks_blocked), str(p.leases_released), str(p.resources_deleted),
                    str(p.artifacts_preserved), "true" if spec.get("force") else "false",
                    str(spec.get("gracePeriodSeconds", "-")), str(spec.get("ttlSecondsAfterFinished", "-"))]
        row.append(str(spec.get("reason") or "")[:60])
        if wide:
            row.append((st.message or "")[:100])
        rows.append(([r.namespace] if namespaces else []) + row)
    headers = (["NAMESPACE"] if namespaces else []) + ["NAME", "KIND", "JOB", "TASK", "REQUESTER", "PHASE", "RUNNERS",
                                                       "STARTED", "DURATION"]
    if wide:
        headers += ["TASKS", "BLOCKED", "LEASES", "DELETED", "KEPT", "FORCE", "GRACE", "TTL"]
    headers += ["REASON"] + (["MESSAGE"] if wide else [])
    return table(headers, rows, phase_col=headers.index("PHASE"))


def records_only(output: str) -> bool:
    """Every -o but table prints only the record(s) on stdout (progress and notes go to stderr)."""
    return output != "table"


def print_records(items: list[Obj], output: str, *, one: bool = False, cont: str | None = None,
                  namespaces: bool = False) -> None:
    """The record(s) in the -o format: `one`, a single resource (what cancel created or followed),
    else a List (its metadata.continue: `cont`). jsonpath values are made terminal-safe like
    all human output (-o json/yaml keep the stored values, escaped by their own syntax)."""
    doc = items[0] if one and items else as_list(items, cont)
    if output in ("json", "yaml"):
        emit_document(doc, output)
    elif output == "name":
        if items:
            click.echo("\n".join(terminal_safe(record_ref(o)) for o in items))
    elif output.startswith("jsonpath="):
        try:
            text = jsonpath.render(jsonpath.parse(output.removeprefix("jsonpath=")), doc, terminal_safe)
        except jsonpath.JsonPathError as exc:
            raise CliError(f"error executing the jsonpath template: {exc}", EXIT_ERROR) from None
        click.echo(text, nl=False)
    elif items:  # table, wide
        click.echo(safe_block(record_table(items, namespaces=namespaces, wide=output == "wide"), coloured(sys.stdout)))


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
    lines: list[str] = [Painted(f"{kind_ref(r)} ({what})  ", st.phase.value, f"  {elapsed}")]
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
    lines: list[str] = [Painted(f"{kind_ref(r)} in namespace {r.namespace}: ", st.phase.value,
                                f" in {fmt_duration(span(started_of(obj), st.completed_at))}")]
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
        if outcomes:
            lines += table(["POD", "OUTCOME"], [[o.pod, o.outcome] for o in outcomes], indent="  ")
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
    lines.append(Painted("  phase:      ", st.phase.value, f" - {st.message}" if st.message else ""))
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
            lines = [paint(ln, self.colour, width) for o in objs for ln in self.block(result_of(o), o)]
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
        objs = refresh(conn, objs)


def refresh(conn: Conn, objs: list[Obj]) -> list[Obj]:
    """The cancellations as they are now: a GET each, or for more than two of one namespace
    one list by their job labels (`necrocode.io/job in (...)`) a kind, and a GET for any not in it."""
    def get(o: Obj) -> Obj:
        return conn.get(PLURAL[o["kind"]], o["metadata"]["namespace"], o["metadata"]["name"])
    namespaces = {o["metadata"]["namespace"] for o in objs}
    jobs = {result_of(o).job_name for o in objs}
    if len(objs) <= 2 or len(namespaces) != 1 or not all(label_ok(j) for j in jobs):
        return [get(o) for o in objs]
    [ns] = namespaces
    selector = f"{LABEL_JOB} in ({','.join(sorted(jobs))})"
    listed: dict[tuple[str, str], Obj] = {}
    for kind in sorted({o["kind"] for o in objs}):
        for item in conn.list_all(PLURAL[kind], ns, selector):
            listed[(kind, item["metadata"]["name"])] = {**item, "kind": kind}
    return [listed.get((o["kind"], o["metadata"]["name"])) or get(o) for o in objs]


def exit_code_of(objs: list[Obj]) -> int:
    """The worst phase among the followed cancellations decides the exit code."""
    codes = [PHASE_EXIT.get(result_of(o).status.phase, EXIT_OK) for o in objs]
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
    display = Display(stream, interactive(stream), view, coloured(stream))
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
        phase = result_of(exc.objs[0]).status.phase.value if exc.objs else "?"
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
        blocks = [(final or view)(result_of(o), o) for o in objs]
        click.echo("\n\n".join(safe_block(b, coloured(sys.stdout)) for b in blocks))
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


# ----------------------------------------------------------------------------- -o
class OutputFormat(click.ParamType[str]):
    """-o table|wide|name|json|yaml|jsonpath=TEMPLATE (a template is checked when parsed)."""

    name = "format"
    CHOICES = ("table", "wide", "name", "json", "yaml")

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[" + "|".join(self.CHOICES) + "|jsonpath=TEMPLATE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).removeprefix("=")  # -o=json, as kubectl takes it
        if text in self.CHOICES:
            return text
        if text == "jsonpath" or text == "jsonpath=":
            self.fail("jsonpath needs a template, e.g. -o jsonpath='{.metadata.name}'", param, ctx)
        if text.startswith("jsonpath="):
            try:
                jsonpath.parse(text.removeprefix("jsonpath="))
            except jsonpath.JsonPathError as exc:
                self.fail(f"bad jsonpath template: {exc}", param, ctx)
            return text
        self.fail(f"{text!r} is not one of {', '.join(self.CHOICES)}, jsonpath=TEMPLATE", param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        return [CompletionItem(c) for c in (*self.CHOICES, "jsonpath=") if c.startswith(incomplete)]


def check_crds(conn: Conn, ns: str | None) -> None:
    """A list of each kind (limit 1): a 404 here means the CRDs are not installed."""
    for plural in PLURAL.values():
        conn.list_objs(plural, ns, limit=1)


class Duration(click.ParamType[int]):
    """A duration in seconds: 3600, 90s, 30m, 1h, 1h30m, 2d (each unit once, largest first)."""

    name = "duration"
    UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    MAX = 2**31 - 1  # the API's integer fields are int32

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
        return seconds


DURATION = Duration()

OUTPUT = click.option("-o", "--output", type=OutputFormat(), default="table", show_default=True,
                      help="Output format: table (the default view); wide (the records' table with more columns); "
                           "name (kind.group/name); json/yaml (the resource(s) as stored); jsonpath=TEMPLATE "
                           "(kubectl's templates). All but table print only the record(s) on stdout.")


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
@click.argument("job_ids", metavar="[JOB-ID]...", nargs=-1, shell_complete=complete_jobs)
@click.option("-l", "--selector", default=None, metavar="SELECTOR",
              help="Cancel every AgentJob that matches this label selector (with or instead of JOB-IDs).")
@click.option("--reason", default="", metavar="TEXT", help="Why; recorded on every task and event.")
@click.option("--force", is_flag=True, help="Delete runner pods at once (grace period 0). If a graceful "
              "cancellation of the job (of the task, with --task) is running, escalate it instead.")
@click.option("--grace-period", type=click.IntRange(0, 3600), default=None, metavar="SECONDS",
              help="Grace each runner pod gets to stop (operator default: 30).")
@click.option("--task", "task_id", default=None, metavar="TASK-ID", help="Cancel only this task (a TaskCancellation).")
@click.option("--no-cascade", is_flag=True, help="With --task: block the task's dependents instead of cancelling them.")
@click.option("--dry-run", is_flag=True, help="Ask the operator what it would do; change nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the cancellation until it finishes.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="Stop waiting after this long (exit 6); the cancellation goes on. Default: no limit.")
@click.option("--ttl", type=DURATION, default=None, metavar="DURATION",
              help="Delete the record this long after it finished (spec.ttlSecondsAfterFinished): 3600, 90s, 30m, "
                   "1h, 1h30m, 2d.")
@OUTPUT
@connection_options
@click.pass_context
def cancel(ctx: click.Context, job_ids: tuple[str, ...], selector: str | None, reason: str, force: bool,
           grace_period: int | None, task_id: str | None, no_cascade: bool, dry_run: bool, wait: bool,
           timeout: float | None, ttl: int | None, output: str,
           kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Cancel job JOB-ID (or, with --task, one task) and follow it live; or several jobs.

    Creates a JobCancellation (a TaskCancellation with --task) with a generated name; the
    operator does the work. By default it then shows each step, runners terminated (and
    forced), tasks cancelled, leases released and resources cleaned, and at the end what
    was affected, forced, released, deleted and kept. Ctrl-C stops watching, never the
    cancellation. Without a terminal it prints one plain line per change.

    Several JOB-IDs, or -l SELECTOR (the AgentJobs with those labels; the ones already
    finished are skipped), create one JobCancellation per job, follow them all and end with
    a summary table (job, cancellation, phase); the exit code is the highest of theirs.

    \b
    Examples:
      necrocode job cancel job1 --reason "budget exceeded"
      necrocode job cancel job1 --force --no-wait
      necrocode job cancel job1 --grace-period 60 --timeout 120
      necrocode job cancel job1 --task t3 --no-cascade
      necrocode job cancel job1 --dry-run -o yaml
      necrocode job cancel job1 job2 job3 --reason "wrong branch"
      necrocode job cancel -l team=search --ttl 1h --no-wait -o name
    """
    if no_cascade and not task_id:
        raise click.UsageError("--no-cascade needs --task", ctx)
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait", ctx)
    if not job_ids and not selector:
        raise click.UsageError("name a JOB-ID (or several), or select jobs with -l SELECTOR", ctx)
    if task_id and (len(job_ids) != 1 or selector):
        raise click.UsageError("--task needs exactly one JOB-ID (and no -l)", ctx)
    conn = open_conn(ctx, kubeconfig, context, namespace)
    ask = Ask(reason=reason, force=force, grace_period=grace_period, dry_run=dry_run, ttl=ttl)
    if len(job_ids) != 1 or selector:
        cancel_many(conn, list(job_ids), selector, ask, wait=wait, timeout=timeout, output=output)
    [job_id] = job_ids
    ns = conn.namespace
    kind = TASK_CANCELLATION if task_id else JOB_CANCELLATION

    # validate before creating anything
    check_crds(conn, ns)
    try:
        conn.get("agentjobs", ns, job_id)
    except CliError as exc:
        if exc.exit_code == EXIT_NOT_FOUND and "CRDs" not in exc.message:
            raise CliError(f"job {job_id} not found in namespace {ns}", EXIT_NOT_FOUND) from None
        raise
    if task_id:
        tasks = records.find_tasks(conn.list_all("agenttasks", ns, records.task_selector(job_id, task_id)),
                                   job_id, task_id)
        if not tasks:
            raise CliError(f"task {task_id} of job {job_id} not found in namespace {ns}", EXIT_NOT_FOUND)

    user = conn.whoami()
    obj, escalated = submit(conn, ns, ask, kind, job_id, task_id, cascade=not no_cascade, user=user)
    name = obj["metadata"]["name"]
    machine = records_only(output)
    done = ("escalated to force (it was running gracefully; spec.force set to true)" if escalated else
            "created" + (" (dry run)" if dry_run else ""))
    click.echo(f"{kind.lower()}.{GROUP}/{name} {done}", err=machine)
    if not wait:
        if machine:
            print_records([obj], output, one=True)
        else:
            click.echo(f"follow it with: {follow_hint(conn, job_id, ns)}")
        return
    watch_and_report(conn, [obj], job=job_id, ns=ns, timeout=timeout, output=output, view=live_block, final=summary)


def running_graceful(conn: Conn, ns: str, kind: str, job_id: str, task_id: str | None) -> Obj | None:
    """The newest cancellation of this kind, job (and task) still running gracefully: what
    `cancel --force` escalates (spec.force to true) instead of asking again."""
    selector = f"{LABEL_JOB}={job_id}" if label_ok(job_id) else None
    for o in newest_first(conn.list_all(PLURAL[kind], ns, selector)):
        spec = o.get("spec") or {}
        if (spec.get("jobName"), spec.get("taskId")) == (job_id, task_id) and not spec.get("force") \
                and not spec.get("dryRun") and not is_terminal(o):
            return {**o, "kind": kind}
    return None


@dataclass(frozen=True)
class Ask:
    """What `cancel` asks for, the same for each job it cancels."""

    reason: str = ""
    force: bool = False
    grace_period: int | None = None
    dry_run: bool = False
    ttl: int | None = None

    def body(self, kind: str, job_id: str, task_id: str | None = None, *, cascade: bool = True,
             user: str | None = None) -> Obj:
        """The new resource: a generated name, the job (and task) labels, the spec."""
        spec: Obj = {"jobName": job_id}
        if self.reason:
            spec["reason"] = self.reason
        if user:
            spec["requestedBy"] = user
        if self.force:
            spec["force"] = True
        if self.grace_period is not None:
            spec["gracePeriodSeconds"] = self.grace_period
        if self.dry_run:
            spec["dryRun"] = True
        if self.ttl is not None:
            spec["ttlSecondsAfterFinished"] = self.ttl
        if task_id:
            spec["taskId"] = task_id
            spec["cascade"] = cascade
        return {"apiVersion": API_VERSION, "kind": kind,
                "metadata": {"name": generate_name(job_id, task_id), "labels": cancellation_labels(job_id, task_id)},
                "spec": spec}


def submit(conn: Conn, ns: str, ask: Ask, kind: str, job_id: str, task_id: str | None = None, *,
           cascade: bool = True, user: str | None = None) -> tuple[Obj, bool]:
    """Create the cancellation; with --force, escalate instead the job's (task's) graceful one
    still running, if there is one (True: escalated)."""
    running = running_graceful(conn, ns, kind, job_id, task_id) if ask.force and not ask.dry_run else None
    escalated = conn.escalate(running, user) if running is not None else None
    if escalated is not None:
        return escalated, True
    return conn.create(PLURAL[kind], ns, ask.body(kind, job_id, task_id, cascade=cascade, user=user)), False


def brief_block(r: CancellationResult, obj: Obj) -> list[str]:
    """One line a cancellation, when several are followed on a terminal."""
    st = r.status
    return [Painted(f"{r.job_name}  {kind_ref(r)}  ", st.phase.value,
                    f"  {fmt_duration(span(started_of(obj), st.completed_at))}  runners {runners_text(st)}, "
                    f"tasks cancelled {st.progress.tasks_cancelled}")]


def outcome_table(final: list[Obj], failed: Mapping[str, CliError], skipped: Sequence[tuple[str, str]]) -> list[str]:
    """The end of `cancel` of several jobs: a row a job (cancellation, phase, message), then the counts."""
    rows = [[r.job_name, r.name, r.status.phase.value, (r.status.message or "")[:100]]
            for r in (result_of(o) for o in final)]
    rows += [[job, "-", "Error", exc.message[:100]] for job, exc in failed.items()]
    rows += [[job, "-", "Skipped", why] for job, why in skipped]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[2]] = counts.get(row[2], 0) + 1
    total = f"{len(rows)} job{'s' if len(rows) != 1 else ''}: " + ", ".join(f"{n} {what}" for what, n in counts.items())
    return [*table(["JOB", "CANCELLATION", "PHASE", "MESSAGE"], rows, phase_col=2), total]


def cancel_many(conn: Conn, job_ids: list[str], selector: str | None, ask: Ask, *, wait: bool,
                timeout: float | None, output: str) -> NoReturn:
    """`cancel` of several jobs (JOB-IDs and/or -l): every named job must exist (else nothing
    is created); jobs the selector matches that already finished are skipped. One
    JobCancellation per job, a failed create reported and the others still made; followed
    together, then the outcome table. Exits with the highest code of them all."""
    ns = conn.namespace
    check_crds(conn, ns)
    targets = list(dict.fromkeys(job_ids))
    missing = []
    for job_id in targets:
        try:
            conn.get("agentjobs", ns, job_id)
        except CliError as exc:
            if exc.exit_code != EXIT_NOT_FOUND or "CRDs" in exc.message:
                raise
            missing.append(job_id)
    if missing:
        raise CliError(f"job{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found in namespace {ns}; "
                       "nothing was created", EXIT_NOT_FOUND)
    skipped: list[tuple[str, str]] = []
    if selector:
        matched = sorted(conn.list_all("agentjobs", ns, selector), key=lambda j: str(j["metadata"]["name"]))
        if not matched and not targets:
            raise CliError(f"no jobs match the selector {selector} in namespace {ns}", EXIT_NOT_FOUND)
        for job in matched:
            name, phase = str(job["metadata"]["name"]), str((job.get("status") or {}).get("phase") or "")
            if name in targets:
                continue
            if phase in FINISHED_JOB_PHASES:
                skipped.append((name, f"already {phase}"))
                click.echo(f"job {terminal_safe(name)} skipped: already {terminal_safe(phase)}", err=True)
            else:
                targets.append(name)

    machine = records_only(output)
    user = conn.whoami() if targets else None
    created: list[Obj] = []
    failed: dict[str, CliError] = {}
    for job_id in targets:
        try:
            obj, escalated = submit(conn, ns, ask, JOB_CANCELLATION, job_id, user=user)
        except CliError as exc:
            if exc.exit_code == EXIT_UNREACHABLE:
                raise
            failed[job_id] = exc
            click.echo(f"error: job {terminal_safe(job_id)}: {terminal_safe(exc.message)}", err=True)
            continue
        created.append(obj)
        done = "escalated to force" if escalated else "created" + (" (dry run)" if ask.dry_run else "")
        click.echo(f"{record_ref(obj)} {done}", err=machine)

    def show(objs: list[Obj]) -> None:
        if machine:
            print_records(objs, output)
        elif objs or failed or skipped:
            click.echo(safe_block(outcome_table(objs, failed, skipped), coloured(sys.stdout)))

    final = created
    if wait and created:
        final = follow_live(conn, created, hint=follow_hint(conn, None, ns), timeout=timeout, output=output,
                            view=brief_block if len(created) > 1 else live_block,
                            on_timeout=None if machine else show)
    if wait or machine:
        show(final)
    codes = [exit_code_of(final) if wait else EXIT_OK, *(exc.exit_code for exc in failed.values())]
    raise click.exceptions.Exit(max(codes))


def latest_cancellations(conn: Conn, job_id: str, ns: str) -> list[Obj]:
    """The newest cancellation of the job, and any other that is still going on (records.latest)."""
    selector = records.job_selector(job_id)
    return records.latest(records.of_job([o for plural in PLURAL.values()
                                          for o in conn.list_all(plural, ns, selector)], job_id))


@job.command("cancel-status", epilog=EXIT_CODES_HELP)
@click.argument("job_id", metavar="JOB-ID", shell_complete=complete_jobs)
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
    if records_only(output):
        print_records(objs, output)
        return
    click.echo("\n\n".join(safe_block(status_view(result_of(o), o), coloured(sys.stdout)) for o in objs))


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
    conn = open_conn(ctx, kubeconfig, context, namespace)
    ns = None if all_namespaces else conn.namespace
    if job_filter and not label_ok(job_filter):
        raise click.BadParameter(f"{job_filter!r} is not a job name", param_hint="--job")
    selector = records.job_selector(job_filter) if job_filter else None
    items, next_token = list_page(conn, ns, selector, limit, token)
    if phase:
        items = [o for o in items if result_of(o).status.phase.value.lower() == phase.lower()]
    items = newest_first(items)
    print_records(items, output, cont=next_token, namespaces=ns is None)
    if not items and output in ("table", "wide", "name"):
        click.echo(f"no cancellations found {_where(ns)}", err=True)
    if next_token and output in ("table", "wide", "name"):  # json/yaml/jsonpath: metadata.continue
        more = f"{conn.prog} job cancellations --limit {limit} --continue {next_token}"
        click.echo(f"more: {more}", err=True)


# ----------------------------------------------------------------------------- completion
@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
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
    click.echo(comp(cli, {}, "necrocode", COMPLETE_VAR).source(), nl=False)


def main() -> None:
    cli.main(prog_name="kubectl necrocode" if "kubectl" in os.path.basename(sys.argv[0]) else "necrocode",
             complete_var=COMPLETE_VAR)


if __name__ == "__main__":
    main()
