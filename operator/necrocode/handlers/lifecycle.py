"""Operator start and stop, the kopf way: `main` builds kopf's settings and the operator-wide
`memo` and hands both to `kopf.operator()`; startup puts the shared API client and service into
that memo (every handler receives it, as `memo`), cleanup closes them.

What the memo holds (kopf gives each resource a shallow copy of it, made after startup, so all
of them share these objects):
  memo.conf      Settings, read once from the environment by `main`
  memo.service   the CancellationService (set by startup, None after cleanup)
  memo.expiries  the pending TTL deletions of this process (handlers/common.py)
  memo.kopf_connections  the size of kopf's connection pool (necrocode.kopfclient; 0: unbounded)
  memo.stop_flag the flag given to kopf.operator (None: signals alone stop it); cleanup raises it
  memo.loop_lag  the task that times the event loop (necrocode.looplag; set by startup,
                 cancelled by cleanup)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import kopf
from prometheus_client import start_http_server

from necrocode import kopfclient, looplag, metrics, tlsbuffers
from necrocode.budget import Budget
from necrocode.kopfmemory import LeanMemories
from necrocode.kube import Kube, load_credentials
from necrocode.logs import log
from necrocode.model import FINALIZER, parse_time
from necrocode.service import CancellationService
from necrocode.settings import Settings


def kopf_settings(conf: Settings, namespaces: Sequence[str]) -> kopf.OperatorSettings:
    """kopf's settings for this operator (passed to `kopf.operator(settings=...)`)."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="necrocode.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="necrocode.io", key="last-handled-configuration")
    settings.posting.enabled = False  # we write our own, deduplicated Events
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = conf.request_timeout * 2
    settings.peering.standalone = True  # no kopf peering (its CRDs are not shipped): HA is leader election
    # Exact namespaces (no patterns) need no cluster-wide read: kopf's observation of namespaces
    # and CRDs is off, which the chart's namespaced RBAC relies on (without it kopf retries the
    # forbidden lists for about a minute before it serves anything; docs/rbac.md).
    settings.scanning.disabled = bool(namespaces) and not kopfclient.patterns(namespaces)
    return settings


def new_memo(conf: Settings, kopf_connections: int,
             stop_flag: asyncio.Event | threading.Event | None = None) -> kopf.Memo:
    """The operator-wide memo (passed to `kopf.operator(memo=...)`), one per run of kopf."""
    return kopf.Memo(conf=conf, service=None, expiries={}, kopf_connections=kopf_connections, stop_flag=stop_flag,
                     loop_lag=None)


def operate(conf: Settings, namespaces: Sequence[str], *, liveness: str | None,
            stop_flag: asyncio.Event | threading.Event | None = None) -> Coroutine[Any, Any, None]:
    """kopf running this package's handlers, with our settings and memo: what `necrocode-operator`
    runs (alone, or while it leads), and what the tests run in a thread. kopf keeps its memory of
    each object in a LeanMemories (necrocode.kopfmemory: not for finished records)."""
    settings = kopf_settings(conf, namespaces)
    limit = kopfclient.connection_limit(namespaces, scanning=not settings.scanning.disabled)
    memories = LeanMemories()
    metrics.KOPF_MEMORIES.set_function(memories.kept)  # this process's operator (the latest, in tests)
    return kopf.operator(clusterwide=not namespaces, namespaces=list(namespaces), settings=settings,
                         memo=new_memo(conf, limit, stop_flag), memories=memories, liveness_endpoint=liveness,
                         stop_flag=stop_flag)


def service_of(memo: kopf.Memo) -> CancellationService:
    service: CancellationService | None = memo.service
    if service is None:  # pragma: no cover - startup always runs before any resource handler
        raise RuntimeError("operator not started")
    return service


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's client: the credentials of `credentials`, in a session whose pool is bounded
    (necrocode.kopfclient: why)."""
    info = credentials(**kwargs)
    if info is None:
        return None
    return kopfclient.bounded_session(info, memo.kopf_connections)


def credentials(**kwargs: Any) -> kopf.ConnectionInfo | None:
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
async def startup(memo: kopf.Memo, **_: Any) -> None:
    conf: Settings = memo.conf
    tlsbuffers.install()  # before most of the operator's connections (kopf's watches start after startup)
    Kube.on_request = lambda verb, resource: metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
    Budget.on_wait = lambda scope, seconds: metrics.API_BUDGET_WAIT.labels(scope=scope).inc(seconds)
    Budget.on_limit = lambda scope, limit: metrics.API_CONCURRENCY_LIMIT.set(limit) if scope == "global" else None
    Budget.on_min_rtt = lambda scope, rtt: metrics.API_MIN_RTT.set(rtt) if scope == "global" else None
    kube = Kube(load_credentials(os.environ.get("NECROCODE_KUBECONFIG") or None), concurrency=conf.concurrency,
                timeout=conf.request_timeout, retry=conf.retry, qps=conf.api_qps, burst=conf.api_burst,
                adaptive=conf.adaptive_concurrency, tolerance=conf.adaptive_tolerance)
    metrics.API_CONCURRENCY_LIMIT.set(kube.budget.limit)
    if conf.coalesce_lists:
        kube.coalesce_lists()
    service = memo.service = CancellationService(kube, conf)
    metrics.OLDEST_RUNNING.source = lambda: running_ages(service)
    metrics.LEADER.set(1)  # without leader election this process acts (with it, the elector's gauge wins)
    serve_metrics(conf.metrics_port)
    memo.loop_lag = asyncio.create_task(looplag.watch(metrics.EVENT_LOOP_LAG.set), name="necrocode loop lag")
    log("operator started", concurrency=conf.concurrency, adaptive_concurrency=conf.adaptive_concurrency,
        adaptive_tolerance=conf.adaptive_tolerance,
        api_qps=conf.api_qps or "unlimited",
        cancellation_concurrency=conf.cancellation_concurrency or "shared",
        cancellation_qps=conf.cancellation_qps or "unlimited", namespaces=list(conf.namespaces) or "all",
        default_ttl_seconds=conf.default_ttl_seconds)


_metrics_serving = False
"""Whether this process serves /metrics already (a standby starts it before kopf's startup)."""


def serve_metrics(port: int | None) -> None:
    """Serve /metrics on `port` (NECROCODE_METRICS_ADDR, default all addresses), once per
    process; None or 0: not at all. A port in use is logged, not fatal."""
    global _metrics_serving
    if not port or _metrics_serving:
        return
    try:
        start_http_server(port, addr=os.environ.get("NECROCODE_METRICS_ADDR", "0.0.0.0"))
        _metrics_serving = True
    except OSError as exc:
        log("metrics server not started", logging.WARNING, error=str(exc), port=port)


def running_ages(service: CancellationService) -> list[tuple[str, float]]:
    """(kind, seconds since status.startedAt) of each cancellation at work here (read by the
    /metrics thread at scrape time)."""
    now = service.clock.now()
    for _ in range(3):  # the event loop may add or remove one while this thread copies them
        try:
            running = list(service.running.values())
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
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    metrics.OLDEST_RUNNING.source = None
    metrics.LEADER.set(0)
    lag: asyncio.Task[None] | None = memo.get("loop_lag")
    if lag is not None:
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
    service: CancellationService | None = memo.service
    memo.service = None
    if service is not None:
        await service.kube.close()
    # kopf waits on a stop flag in a task of its own ("stop-flag waiter"), which a signal's stop
    # leaves pending; its shutdown then gives such leftover tasks 5 s before it cancels them, so
    # every SIGTERM of a leader-elected replica (whose flag is the elector's) took 5 s longer.
    # The operator is stopping either way: raising the flag ends that task at once.
    flag: asyncio.Event | threading.Event | None = memo.get("stop_flag")
    if flag is not None:
        flag.set()
    log("operator stopped")
