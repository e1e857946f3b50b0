"""`necrocode-operator`: run the controller (kopf) with our handlers.

    necrocode-operator [--namespace NS ...] [--log-format json|text] [--leader-elect]
    necrocode-operator --release-finalizers [--deployment NS/NAME] [--namespace NS ...]   (before an uninstall)

Settings are environment variables (docs/operations.md); flags override the common ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from necrocode import logs

T = TypeVar("T")
LOOPS = ("asyncio", "uvloop")
DEFAULT_LOOP = "asyncio"
"""asyncio's own loop by default: under connection resets uvloop can raise "File descriptor N
is used by transport" from its sock_connect (MagicStack/uvloop#653, open upstream), which kills
kopf's watcher and with it the operator; measured here 3 times in 8 runs of the proxy fault
test, never with asyncio. uvloop stays an opt-in (about 17 % less operator CPU per runner)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="necrocode-operator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--namespace", action="append", default=[],
                    help="namespace (or glob pattern) to serve; repeat; default: the whole cluster")
    ap.add_argument("--log-format", choices=["json", "text"], default=os.environ.get("NECROCODE_LOG_FORMAT", "json"))
    ap.add_argument("--log-level", default=os.environ.get("NECROCODE_LOG_LEVEL", "INFO"))
    ap.add_argument("--liveness", default=os.environ.get("NECROCODE_LIVENESS", "http://0.0.0.0:8081/healthz"))
    ap.add_argument("--leader-elect", action=argparse.BooleanOptionalAction,
                    default=os.environ.get("NECROCODE_LEADER_ELECT", "false").lower() in ("1", "true", "yes"),
                    help="run as one of several replicas: only the holder of the leader Lease acts")
    ap.add_argument("--leader-namespace", default=os.environ.get("NECROCODE_LEADER_NAMESPACE")
                    or os.environ.get("POD_NAMESPACE") or "default")
    ap.add_argument("--leader-lease", default=os.environ.get("NECROCODE_LEADER_LEASE", "necrocode-cancel-leader"))
    ap.add_argument("--leader-lease-seconds", type=int, default=int(os.environ.get("NECROCODE_LEADER_LEASE_SECONDS", "15")),
                    help="a standby takes the Lease after it has seen it unrenewed this long (default 15)")
    ap.add_argument("--leader-renew-deadline-seconds", type=float, default=_env_float("NECROCODE_LEADER_RENEW_DEADLINE_SECONDS"),
                    help="the leader stops writing, and exits, when it has not renewed the Lease for this long; "
                         "must be shorter than the lease (default: 2/3 of it, 10 of 15)")
    ap.add_argument("--leader-retry-seconds", type=float, default=_env_float("NECROCODE_LEADER_RETRY_SECONDS"),
                    help="how often the leader renews and a standby looks at the Lease; shorter than the renew "
                         "deadline (default: 2/15 of the lease, 2 of 15)")
    ap.add_argument("--event-loop", choices=LOOPS, default=os.environ.get("NECROCODE_EVENT_LOOP", DEFAULT_LOOP),
                    help="asyncio (default) or uvloop (less CPU, but see MagicStack/uvloop#653: it can "
                         "kill the operator under connection resets; falls back to asyncio if not installed)")
    ap.add_argument("--release-finalizers", action="store_true",
                    help="do not operate: take the operator's finalizer off every cancellation record in the "
                         "served namespaces and exit (before an uninstall: the chart's pre-delete hook)")
    ap.add_argument("--deployment", default="", metavar="NAMESPACE/NAME",
                    help="with --release-finalizers: first scale this Deployment of the operator to 0 and wait "
                         "until its pods are gone")
    a = ap.parse_args(argv)
    from necrocode.settings import Settings

    try:
        conf = Settings.from_env()
    except ValueError as exc:
        ap.error(str(exc))
    if a.event_loop not in LOOPS:
        ap.error(f"NECROCODE_EVENT_LOOP={a.event_loop!r}: expected one of {', '.join(LOOPS)}")
    if a.leader_elect:
        from necrocode.leader import LeaderTiming

        try:
            a.leader_timing = LeaderTiming.scaled(a.leader_lease_seconds, a.leader_renew_deadline_seconds,
                                                  a.leader_retry_seconds)
        except ValueError as exc:
            ap.error(f"leader election: {exc}")
    logs.configure(a.log_format, a.log_level)
    from necrocode import tlsbuffers

    tlsbuffers.install()  # before any connection (a standby's leader election opens some before kopf starts)
    if a.release_finalizers:
        return _release(a)
    namespaces: list[str] = a.namespace or [n for n in os.environ.get("NECROCODE_NAMESPACES", "").split(",") if n]
    from necrocode import gctuning, metrics
    from necrocode.handlers import lifecycle  # importing the package registers every handler

    gctuning.tune()  # everything imported: frozen, and the collections spaced out (why: gctuning)
    gctuning.watch(lambda generation, seconds: metrics.GC_PAUSE.labels(generation=str(generation)).observe(seconds))

    def operate(stop: asyncio.Event | None = None) -> Awaitable[None]:
        # with leader election the process serves its own liveness endpoint from the start, as a
        # standby too (_leading); kopf's would only start once this replica leads
        return lifecycle.operate(conf, namespaces, liveness=None if a.leader_elect else (a.liveness or None),
                                 stop_flag=stop)

    try:
        if not a.leader_elect:
            _run(operate(), a.event_loop)  # type: ignore[arg-type]
            return 0
        return _run(_leading(a, operate), a.event_loop)
    except KeyboardInterrupt:
        return 130


def _release(a: argparse.Namespace) -> int:
    """--release-finalizers (necrocode.uninstall): stop the operator, free its records, exit."""
    from necrocode import uninstall
    from necrocode.kube import Kube, load_credentials

    namespaces = a.namespace or [n for n in os.environ.get("NECROCODE_NAMESPACES", "").split(",") if n]
    kube = Kube(load_credentials(os.environ.get("NECROCODE_KUBECONFIG") or None), concurrency=20)
    return _run(uninstall.run(kube, namespaces, a.deployment))


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def _run(main: Coroutine[Any, Any, T], loop: str = DEFAULT_LOOP) -> T:
    """Run on the chosen loop (see DEFAULT_LOOP for why asyncio's is the default): every request,
    watch event and timer of a cancellation goes through it; uvloop's costs less CPU (operator
    CPU at N = 1,000: 7.0 s -> 5.9 s, docs/benchmarks.md) when it is asked for."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


async def _leading(a: argparse.Namespace, operate: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    from necrocode.clock import SystemClock
    from necrocode.kube import load_credentials
    from necrocode.leader import ElectorKube, LeaderElector, run_leading

    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    # the elector's own client: its renewals pass the fence that stops every other write
    kube = ElectorKube(load_credentials(os.environ.get("NECROCODE_KUBECONFIG") or None), concurrency=2,
                       timeout=a.leader_timing.renew_deadline_seconds)
    elector = LeaderElector(kube, a.leader_namespace, a.leader_lease, identity, clock=SystemClock(),
                            timing=a.leader_timing)
    fence_kopf()
    # A standby serves liveness (and readiness: the same endpoint) and /metrics while it waits
    # for the Lease: readiness means "healthy", not "leader", so that a rolling update with
    # maxUnavailable 0 completes and a PodDisruptionBudget of minAvailable 1 over 2 replicas lets
    # a drain evict one of them. The leader keeps serving both from the same servers.
    def role() -> str:
        return "leader" if elector.renewed_at is not None and not elector.lost else "standby"

    health = await serve_health(a.liveness, role) if a.liveness else None
    start_metrics(role)
    await own_lease(kube, a.leader_namespace, a.leader_lease)
    code: int | None = None  # None: ended by an exception
    try:
        code = await _until_signal(run_leading(elector, operate))
        return code
    finally:
        if health is not None:
            await health.cleanup()
        await kube.close()
        logs.log("leader stopped", identity=identity, exit_code=code, lost=elector.lost or None,
                 writes_allowed=elector.writes_allowed, writes_refused=elector.writes_refused,
                 last_write_monotonic=elector.last_write_at, api_requests=_api_requests())


async def _until_signal(leading: Coroutine[Any, Any, int]) -> int:
    """Run `leading`, ending it on SIGTERM/SIGINT received before kopf takes those signals over
    (kopf installs its own handlers once this replica leads and stops gracefully on them). A
    standby has nothing to stop, but it must stop: as a container's PID 1 it gets no default
    action for SIGTERM, and would sit out the whole termination grace period."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, signalled.set)
    task = asyncio.create_task(leading)
    waiter = asyncio.create_task(signalled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        logs.log("signal received while standing by; stopping")
        task.cancel()  # run_leading releases the Lease if it had just been acquired
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return 0
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def service_account(token_path: str = SA_TOKEN) -> dict[str, str] | None:
    """namespace, name and uid of the ServiceAccount whose token the pod runs with (the claims of
    its projected token; not verified: only used to name an owner), or None out of cluster."""
    import base64
    import json

    try:
        payload = open(token_path).read().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        k8s = claims["kubernetes.io"]
        return {"namespace": k8s["namespace"], "name": k8s["serviceaccount"]["name"],
                "uid": k8s["serviceaccount"]["uid"]}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


async def own_lease(kube: Any, namespace: str, name: str, token_path: str = SA_TOKEN) -> None:
    """In a pod: make the leader Lease owned by the pod's ServiceAccount (an ownerReference), so
    that removing the installation (`helm uninstall` deletes the ServiceAccount) lets the garbage
    collector remove the Lease too. Creates the Lease, without a holder, if it is missing. Best
    effort: a failure is logged and leader election goes on as before."""
    from necrocode.kube import ApiError, Conflict, NotFound, lease_path

    sa = service_account(token_path)
    if sa is None or sa["namespace"] != namespace:
        return
    owner = {"apiVersion": "v1", "kind": "ServiceAccount", "name": sa["name"], "uid": sa["uid"]}
    try:
        try:
            lease = await kube.get(lease_path(namespace, name))
        except NotFound:
            try:
                await kube.create(lease_path(namespace), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner]}, "spec": {}})
            except Conflict:
                pass  # another replica created it; it sets the owner too
            return
        owners = lease.get("metadata", {}).get("ownerReferences") or []
        if any(o.get("uid") == sa["uid"] for o in owners):
            return
        lease["metadata"]["ownerReferences"] = [o for o in owners if o.get("kind") != "ServiceAccount"] + [owner]
        try:
            await kube.request("PUT", lease_path(namespace, name), body=lease)
        except (Conflict, NotFound):
            pass  # changed meanwhile (a renewal): the next start sets it
    except ApiError as exc:
        logs.log("leader Lease owner not set", error=str(exc), lease=f"{namespace}/{name}")


async def serve_health(url: str, role: Callable[[], str]) -> Any:
    """An HTTP endpoint at `url` (e.g. http://0.0.0.0:8081/healthz) that answers 200 with this
    replica's role while its event loop runs (what kopf's liveness endpoint reports without probe
    handlers). Returns the aiohttp AppRunner (cleanup() stops it)."""
    from urllib.parse import urlparse

    from aiohttp import web

    u = urlparse(url)
    path = u.path or "/healthz"

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": role()})

    app = web.Application()
    app.router.add_get(path, healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, u.hostname or "0.0.0.0", u.port or 8081).start()
    logs.log("health endpoint serving", url=url)
    return runner


def start_metrics(role: Callable[[], str]) -> None:
    """Serve /metrics now (a standby too), with necrocode_leader (1 while this replica leads);
    the operator's startup then finds it started (NECROCODE_METRICS_PORT=0: none)."""
    from necrocode import metrics
    from necrocode.handlers.lifecycle import serve_metrics
    from necrocode.settings import Settings

    metrics.LEADER.set_function(lambda: 1.0 if role() == "leader" else 0.0)
    serve_metrics(Settings.from_env().metrics_port)


def fence_kopf() -> None:
    """kopf writes too, with its own client (the finalizer, its annotations): put those writes
    behind the same fence as ours (Kube.guard, set by the leader elector). kopf has no hook for
    it; its post/patch/delete all go through the one function wrapped here (kopf is pinned)."""
    from kopf._cogs.clients import api as kopf_api

    from necrocode.kube import Kube

    original = kopf_api.request
    if getattr(original, "__necrocode_fenced__", False):
        return

    async def request(method: str, *args: Any, **kwargs: Any) -> Any:
        if method.upper() != "GET" and Kube.guard is not None:
            Kube.guard()
        return await original(method, *args, **kwargs)

    setattr(request, "__necrocode_fenced__", True)  # noqa: B010
    kopf_api.request = request


def _api_requests() -> dict[str, int]:
    """necrocode_api_requests_total by verb, as this process counted it (read at exit, when
    /metrics may no longer be scraped)."""
    from necrocode import metrics

    out: dict[str, int] = {}
    for m in metrics.API_REQUESTS.collect():
        for s in m.samples:
            if s.name.endswith("_total"):
                out[s.labels["verb"]] = out.get(s.labels["verb"], 0) + int(s.value)
    return out


if __name__ == "__main__":
    sys.exit(main())
