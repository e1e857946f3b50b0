"""The connection to the API server: the calls the commands make on the custom resources,
and how an answer of the API server (or no answer) turns into the CLI's one-line errors and
exit codes (necrocode.cli.errors)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from necrocode.cli.errors import EXIT_ERROR, EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_USAGE, CliError, where
from necrocode.model import ANNOTATION_FORCE_REQUESTER, GROUP, PLURAL, VERSION
from necrocode.naming import NAME_MAX

Obj = dict[str, Any]

LIST_CHUNK = 500
REQUEST_TIMEOUT = (10, 60)  # connect, read


# ----------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class ApiCall:
    """What a request was, to name it in an error: verb, resource (plural.group), namespace."""

    verb: str
    resource: str
    namespace: str | None = None
    name: str | None = None


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
        return CliError(f"{what} {call.name} not found {where(call.namespace)}", EXIT_NOT_FOUND)
    if status == 403:
        user = re.search(r'User "([^"]*)"', message)
        who = f'user "{user.group(1)}"' if user else "user"
        return CliError(f"forbidden: {who} cannot {call.verb} {call.resource} {where(call.namespace)}",
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


# ----------------------------------------------------------------------------- calls
@dataclass
class Conn:
    """The API client of one connection, the namespace commands act in, and how it was made
    (context, kubeconfig, impersonation: the follow-up commands the CLI prints name them again)."""

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

    def list_records(self, ns: str | None, selector: str | None = None) -> list[Obj]:
        """Every cancellation record, of both kinds (every page)."""
        return [o for plural in PLURAL.values() for o in self.list_all(plural, ns, selector)]

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

    def check_crds(self, ns: str | None) -> None:
        """A list of each kind (limit 1): a 404 here means the CRDs are not installed."""
        for plural in PLURAL.values():
            self.list_objs(plural, ns, limit=1)
