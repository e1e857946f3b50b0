"""Operator start and stop: kopf settings, the shared API client and service, /metrics."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import kopf
from prometheus_client import start_http_server

from necrocode import metrics
from necrocode.kube import Kube, load_credentials
from necrocode.logs import log
from necrocode.model import FINALIZER, parse_time
from necrocode.service import CancellationService
from necrocode.settings import Settings

_service: CancellationService | None = None
_metrics_started = False


def service() -> CancellationService:
    if _service is None:  # pragma: no cover - startup always runs first
        raise RuntimeError("operator not started")
    return _service


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster ServiceAccount, else the kubeconfig named by $NECROCODE_KUBECONFIG or
    $KUBECONFIG (read at login time), else the client library's own discovery."""
    path = os.environ.get("NECROCODE_KUBECONFIG")
    if path:
        os.environ["KUBECONFIG"] = path
    info = kopf.login_with_service_account(**kwargs)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is not None and host and port:
        # kopf always says https://kubernetes.default.svc; the in-cluster contract is these two
        # variables (the chart's apiServer.host/port, e.g. a hostNetwork pod on a local node)
        info = dataclasses.replace(info, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    info = info or kopf.login_with_kubeconfig(**kwargs)
    return info or kopf.login_via_client(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _service, _metrics_started
    conf = Settings.from_env()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="necrocode.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="necrocode.io", key="last-handled-configuration")
    settings.posting.enabled = False  # we write our own, deduplicated Events
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = conf.request_timeout * 2
    settings.peering.standalone = True  # no kopf peering (its CRDs are not shipped): HA is leader election
    Kube.on_request = lambda verb: metrics.API_REQUESTS.labels(verb=verb).inc()
    kube = Kube(load_credentials(os.environ.get("NECROCODE_KUBECONFIG") or None), concurrency=conf.concurrency,
                timeout=conf.request_timeout, retry=conf.retry)
    _service = CancellationService(kube, conf)
    metrics.OLDEST_RUNNING.source = _running_ages
    metrics.LEADER.set(1)  # without leader election this process acts (with it, the elector's gauge wins)
    if conf.metrics_port and not _metrics_started:
        try:
            start_http_server(conf.metrics_port, addr=os.environ.get("NECROCODE_METRICS_ADDR", "0.0.0.0"))
            _metrics_started = True
        except OSError as exc:
            log("metrics server not started", logging.WARNING, error=str(exc), port=conf.metrics_port)
    log("operator started", concurrency=conf.concurrency, namespaces=list(conf.namespaces) or "all",
        default_ttl_seconds=conf.default_ttl_seconds)


def _running_ages() -> list[tuple[str, float]]:
    """(kind, seconds since status.startedAt) of each cancellation at work here (read by the
    /metrics thread at scrape time)."""
    svc = _service
    if svc is None:
        return []
    now = svc.clock.now()
    for _ in range(3):  # the event loop may add or remove one while this thread copies them
        try:
            running = list(svc.running.values())
            break
        except RuntimeError:
            continue
    else:
        return []
    out = []
    for ctx in running:
        started = parse_time(ctx.status.started_at)
        if started is not None:
            out.append((ctx.kind, max(0.0, (now - started).total_seconds())))
    return out


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _service
    metrics.OLDEST_RUNNING.source = None
    metrics.LEADER.set(0)
    if _service is not None:
        await _service.kube.close()
        _service = None
    log("operator stopped")
