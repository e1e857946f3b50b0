"""The operator as a subprocess for the tests that need its own process (faults, budgets): a
job of many running tasks to cancel, the operator started and stopped, and its log quoted when
something goes wrong."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from kubernetes.client import rest

from tests.support.kube import ClusterInfo, Kubectl, operator_env, wait_for

PRODUCTION_RETRY = {"NECROCODE_RETRY_ATTEMPTS": "5", "NECROCODE_RETRY_BASE_SECONDS": "0.5"}
"""The documented defaults (docs/operations.md), not the suite's 3 attempts from 0.2 s: that
budget (~0.6 s of pauses) is for tests that want failures fast; these faults last seconds, and
the question is whether the operator as shipped rides them out."""


def pooled(kubeconfig: Path) -> Kubectl:
    """A Kubectl whose pool really has 32 connections: Kubectl sets the size after the client
    made its pool (of 10), so 22 of 32 threads would open a new TLS connection per request."""
    k = Kubectl(kubeconfig)
    k.api.rest_client = rest.RESTClientObject(k.api.configuration)
    return k


def populate(kube: Kubectl, ns: str, n: int, job: str = "job", grace: int = 20) -> None:
    """A running job with n tasks, each with a runner pod (kwok, stops 1-8 s after its
    deletion) and a held repo slot, created from 32 threads."""
    started = time.monotonic()
    kube.create_job(ns, job)
    bulk = pooled(kube.kubeconfig)

    def one(i: int) -> None:
        task = f"t{i:03d}"
        runner = f"{job}-{task}-runner"
        bulk.create_runner(ns, job, task, stop="slow", after=1 + i % 8, grace=grace)
        bulk.create_task(ns, job, task, "Running", runner=runner, slot=f"slot-{task}")
        bulk.create_lease(ns, f"slot-{task}", job=job, task_id=task, holder=runner)

    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(one, range(n)))
    finally:
        bulk.api.close()
    # every runner Running (kwok gave it an IP) before the cancellation, as in production
    wait_for(lambda: sum(1 for p in kube.pods(ns, f"necrocode.io/job={job}") if p.status.pod_ip) == n,
             timeout=60, what=f"{n} runners Running")
    print(f"\n{n} runners, tasks and leases in {time.monotonic() - started:.1f}s", file=sys.stderr)


@contextmanager
def run_operator(cluster: ClusterInfo, ns: str, log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a subprocess serving `ns`, stopped on exit (`stop`: SIGTERM, and a failure
    quoting its log if it overruns STOP_BOUND)."""
    full = {**os.environ, **operator_env(cluster), **PRODUCTION_RETRY, **env}
    proc = subprocess.Popen([sys.executable, "-m", "necrocode.main", "--namespace", ns, "--liveness", ""],
                            env=full, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc, log)


STOP_BOUND = 20.0
"""Seconds an operator process has to exit after SIGTERM: its daemons' cancellation_timeout
(10 s), then the Lease given up (two requests of at most the renew deadline), with room for a
slow machine; the chart's pod has 30 s (the default terminationGracePeriodSeconds)."""


def stop(proc: subprocess.Popen[bytes], log: Path, bound: float = STOP_BOUND) -> None:
    """SIGTERM (and SIGCONT, for a paused one); an operator still running after `bound` seconds
    is a defect: SIGABRT makes it print every thread's traceback into its log (faulthandler,
    PYTHONFAULTHANDLER in operator_env), then it is killed and the test fails with that log."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=bound)
        return
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    raise AssertionError(f"the operator did not exit within {bound:.0f} s of SIGTERM\n{evidence(log, 80)}")


def alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Fail at once, with the evidence, when the operator process has exited."""
    if proc.poll() is not None:
        raise AssertionError(f"the operator exited (code {proc.returncode})\n{evidence(log)}")


_REFUSED = re.compile(r"forbidden|(?<![\d.])403(?![\d.])", re.IGNORECASE)


def refusals(text: str) -> list[str]:
    """The lines of an operator log that tell of a request the API server refused (403
    Forbidden). A record is read value by value, leaving out its timestamp: matching the raw
    text failed a run whose log had a line written at "19:14:51.403Z"."""
    found = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = line
        values = ([v if isinstance(v, str) else json.dumps(v) for k, v in rec.items() if k != "ts"]
                  if isinstance(rec, dict) else [str(rec)])
        if any(_REFUSED.search(v) for v in values):
            found.append(line)
    return found


def evidence(log: Path, lines: int = 40) -> str:
    """The operator's warnings and errors (JSON lines), then the tail of its log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    bad = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                bad.append(line)
            continue
        if str(rec.get("level", "")).upper() in ("WARNING", "ERROR", "CRITICAL"):
            bad.append(line)
    tail = text.splitlines()[-lines:]
    return (f"operator warnings/errors (first 60 of {len(bad)}):\n" + "\n".join(bad[:60])
            + "\n--- operator log tail:\n" + "\n".join(tail))
