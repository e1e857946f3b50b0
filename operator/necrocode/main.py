"""`necrocode-operator`: run the controller (kopf) with our handlers.

    necrocode-operator [--namespace NS ...] [--log-format json|text] [--peering NAME]

Settings are environment variables (docs/operations.md); flags override the common ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import kopf

from necrocode import logs

T = TypeVar("T")
LOOPS = ("uvloop", "asyncio")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="necrocode-operator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--namespace", action="append", default=[],
                    help="namespace (or glob pattern) to serve; repeat; default: the whole cluster")
    ap.add_argument("--log-format", choices=["json", "text"], default=os.environ.get("NECROCODE_LOG_FORMAT", "json"))
    ap.add_argument("--log-level", default=os.environ.get("NECROCODE_LOG_LEVEL", "INFO"))
    ap.add_argument("--peering", default=os.environ.get("NECROCODE_PEERING", ""),
                    help="kopf peering name for high availability (one active instance)")
    ap.add_argument("--liveness", default=os.environ.get("NECROCODE_LIVENESS", "http://0.0.0.0:8081/healthz"))
    ap.add_argument("--leader-elect", action=argparse.BooleanOptionalAction,
                    default=os.environ.get("NECROCODE_LEADER_ELECT", "false").lower() in ("1", "true", "yes"),
                    help="run as one of several replicas: only the holder of the leader Lease acts")
    ap.add_argument("--leader-namespace", default=os.environ.get("NECROCODE_LEADER_NAMESPACE")
                    or os.environ.get("POD_NAMESPACE") or "default")
    ap.add_argument("--leader-lease", default=os.environ.get("NECROCODE_LEADER_LEASE", "necrocode-cancel-leader"))
    ap.add_argument("--leader-lease-seconds", type=int, default=int(os.environ.get("NECROCODE_LEADER_LEASE_SECONDS", "15")))
    ap.add_argument("--event-loop", choices=LOOPS, default=os.environ.get("NECROCODE_EVENT_LOOP", "uvloop"),
                    help="uvloop (default; falls back to asyncio if it is not installed) or asyncio")
    a = ap.parse_args(argv)
    if a.event_loop not in LOOPS:
        ap.error(f"NECROCODE_EVENT_LOOP={a.event_loop!r}: expected one of {', '.join(LOOPS)}")
    logs.configure(a.log_format, a.log_level)
    if a.peering:
        os.environ["NECROCODE_PEERING"] = a.peering
    namespaces: list[str] = a.namespace or [n for n in os.environ.get("NECROCODE_NAMESPACES", "").split(",") if n]
    import necrocode.handlers  # noqa: F401  (registers the handlers)

    def operate(stop: asyncio.Event | None = None) -> Awaitable[None]:
        return kopf.operator(clusterwide=not namespaces, namespaces=namespaces,
                             liveness_endpoint=a.liveness or None, stop_flag=stop)

    try:
        if not a.leader_elect:
            _run(operate(), a.event_loop)  # type: ignore[arg-type]
            return 0
        return _run(_leading(a, operate), a.event_loop)
    except KeyboardInterrupt:
        return 130


def _run(main: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """Run on uvloop when it is installed (it is a dependency; `asyncio` opts out): every
    request, watch event and timer of a cancellation goes through the loop, and uvloop's
    costs less CPU than asyncio's (operator CPU at N = 1,000: 7.0 s -> 5.9 s, docs/benchmarks.md)."""
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
    from necrocode.kube import Kube, load_credentials
    from necrocode.leader import LeaderElector, run_leading

    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    kube = Kube(load_credentials(os.environ.get("NECROCODE_KUBECONFIG") or None), concurrency=2)
    renew = max(1.0, a.leader_lease_seconds / 3)
    elector = LeaderElector(kube, a.leader_namespace, a.leader_lease, identity, clock=SystemClock(),
                            lease_seconds=a.leader_lease_seconds, renew_seconds=renew, retry_seconds=renew)
    try:
        return await run_leading(elector, operate)
    finally:
        await kube.close()


if __name__ == "__main__":
    sys.exit(main())
