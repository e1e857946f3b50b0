"""`necrocode-operator`: run the controller (kopf) with our handlers.

    necrocode-operator [--namespace NS ...] [--log-format json|text] [--peering NAME]

Settings are environment variables (docs/operations.md); flags override the common ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import kopf

from necrocode import logs


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
    a = ap.parse_args(argv)
    logs.configure(a.log_format, a.log_level)
    if a.peering:
        os.environ["NECROCODE_PEERING"] = a.peering
    namespaces: list[str] = a.namespace or [n for n in os.environ.get("NECROCODE_NAMESPACES", "").split(",") if n]
    import necrocode.handlers  # noqa: F401  (registers the handlers)

    try:
        asyncio.run(kopf.operator(
            clusterwide=not namespaces, namespaces=namespaces,
            liveness_endpoint=a.liveness or None,
        ))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
