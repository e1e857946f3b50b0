"""hack/check-leftovers.sh (run by `make test` after pytest) reports only the processes of the
test run: those carrying its NECROCODE_TEST_RUN id, which every process the run starts inherits
(tests/conftest.py sets it). A process of another run, or one without the id (a cluster from
`make cluster-up` in another terminal), is ignored. Stand-ins: sleeping Pythons whose command line
names an etcd of the check's cache, as the control plane's processes do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "check-leftovers.sh"
BRIDGE_LEFT = Path("/sys/class/net/ncnode0").exists()  # a real node's bridge on this host


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    return tmp_path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NECROCODE_TEST_RUN"}


def _etcd(cache: Path, procs: list[subprocess.Popen[bytes]], run: str | None) -> int:
    env = _base_env() | ({"NECROCODE_TEST_RUN": run} if run else {})
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(cache / "bin" / "etcd")],
                         env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    procs.append(p)
    return p.pid


def _check(cache: Path, run: str | None) -> subprocess.CompletedProcess[str]:
    env = _base_env() | {"NECROCODE_CACHE": str(cache)} | ({"NECROCODE_TEST_RUN": run} if run else {})
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=20)


def _reported(res: subprocess.CompletedProcess[str]) -> set[int]:
    return {int(line.split(":")[0]) for line in res.stderr.splitlines()
            if line.startswith("  ") and line.strip().split(":")[0].isdigit()}


def test_only_the_runs_own_processes_are_leftovers(cache: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    run, other = f"unit-{uuid.uuid4().hex[:8]}", f"unit-{uuid.uuid4().hex[:8]}"
    ours = _etcd(cache, procs, run)
    other_run = _etcd(cache, procs, other)
    cluster_up = _etcd(cache, procs, None)  # `make cluster-up` in another terminal

    res = _check(cache, run)
    assert res.returncode == 1, res
    assert f"leftover processes after the test run {run}:" in res.stderr
    assert _reported(res) == {ours}, res.stderr

    # without a run id: the processes of any test run (a test session running meanwhile may add
    # its own), still not the cluster-up one
    res = _check(cache, None)
    assert res.returncode == 1, res
    assert {ours, other_run} <= _reported(res), res.stderr
    assert cluster_up not in _reported(res), res.stderr

    procs[0].kill()
    procs[0].wait()
    res = _check(cache, run)
    assert _reported(res) == set(), res.stderr
    assert res.returncode == (1 if BRIDGE_LEFT else 0), res
    if not BRIDGE_LEFT:
        assert f"no control-plane or operator process of the test run {run} left behind" in res.stdout
