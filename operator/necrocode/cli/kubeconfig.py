"""Where the connection comes from, in kubectl's order (--kubeconfig, $KUBECONFIG,
~/.kube/config, else the pod's ServiceAccount), and kubectl's impersonation (--as, --as-group):
`connect` returns the Conn the commands use."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from necrocode.cli.connection import Conn, map_exception
from necrocode.cli.errors import EXIT_UNREACHABLE, CliError

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

