"""What every part of the harness shares: the world's constants, progress lines, statistics and
the description of the machine a run was made on (soak.py uses the last three too)."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
Obj = dict[str, Any]
NODES = 10
NS_PREFIX = "nb-"  # the benchmark's namespaces (the operator serves the whole cluster)
TERMINAL = {"Completed", "PartiallyCompleted", "Failed", "Rejected"}
GRACE = 30
SELECTOR = "necrocode.io/job=job"  # the runners of the one job a size's world holds


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def machine() -> Obj:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    versions: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (REPO / "hack" / "versions.env").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                versions[k.strip()] = v.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "host": socket.gethostname(), "versions": versions,
            "loadavg_at_start": os.getloadavg()}
