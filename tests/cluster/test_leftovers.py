"""An interrupted test run leaves no control-plane process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.kube import ClusterInfo
from tests.support.terminal import sigint_as_from_a_terminal

SCRIPT = """
import time
from hack.localcluster import LocalCluster
from pathlib import Path
c = LocalCluster(dir=Path({state!r}), nodes=1, tie_to_parent=True, bins=Path({bins!r}))
c.up()
print("up", flush=True)
try:
    time.sleep(600)
finally:
    c.down()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_interrupted_run_leaves_no_process(cluster: ClusterInfo, tmp_path: Path, sig: int) -> None:
    if not cluster.local or cluster.bins is None:
        pytest.skip("only for the local control plane")
    with sigint_as_from_a_terminal():
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(state=str(tmp_path / "cp"), bins=str(cluster.bins))],
                                cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "up", line
    pids = json.loads((tmp_path / "cp" / "pids").read_text())
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert all(_alive(p) for p in pids.values())
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.2)
    assert [name for name, p in pids.items() if _alive(p)] == []
