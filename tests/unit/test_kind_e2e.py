"""`make kind-e2e`, checked as far as a machine without Docker can: the kind config (parses, uses
only kind's v1alpha4 fields, labels and taints the real node as hack/realnode.py does, leaves a
node for the drain), the commands `make -n kind-e2e` would run, the early failure without Docker
or kind, the runner's Dockerfile against the image built without Docker, and the runner's report
line (its termination message) as the real-node fixtures parse it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hack import ociimage, realnode
from tests.support.realnode import BOOT_ID, parse_report

REPO = Path(__file__).resolve().parents[2]

KIND_CONFIG = REPO / "hack" / "kind-config.yaml"
# kind's config API (sigs.k8s.io/kind/pkg/apis/config/v1alpha4): a field it does not know is an error
CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
                  "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
                  "containerdConfigPatchesJSON6902"}
NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings", "gpus", "kubeadmConfigPatches",
               "kubeadmConfigPatchesJSON6902"}


def kind_config() -> dict[str, Any]:
    doc = yaml.safe_load(KIND_CONFIG.read_text())
    assert isinstance(doc, dict)
    return doc


def taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The taints a node's kubeadm JoinConfiguration patches register it with."""
    out = []
    for patch in node.get("kubeadmConfigPatches", []):
        doc = yaml.safe_load(patch)
        if doc.get("kind") == "JoinConfiguration":
            out += doc.get("nodeRegistration", {}).get("taints", [])
    return out


def test_the_kind_config_is_kinds_v1alpha4() -> None:
    doc = kind_config()
    assert (doc["kind"], doc["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert set(doc) <= CLUSTER_FIELDS, set(doc) - CLUSTER_FIELDS
    for node in doc["nodes"]:
        assert set(node) <= NODE_FIELDS, set(node) - NODE_FIELDS
        assert node["role"] in ("control-plane", "worker")
        assert "image" not in node, "the node image is the Makefile's KIND_NODE_IMAGE, one place"
    assert [n["role"] for n in doc["nodes"]].count("control-plane") == 1


def test_one_worker_is_the_real_node_labelled_and_tainted_as_hack_realnode() -> None:
    nodes = kind_config()["nodes"]
    real = [n for n in nodes if n.get("labels", {}).get(realnode.LABEL) == "real"]
    assert len(real) == 1 and real[0]["role"] == "worker"
    assert taints(real[0]) == [{"key": realnode.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    # the drain test moves the operator's replicas off the real node: a worker they may go to, that
    # the scheduler otherwise avoids (only a PreferNoSchedule taint)
    others = [n for n in nodes if n["role"] == "worker" and n is not real[0]]
    assert [[t["effect"] for t in taints(n)] for n in others] == [["PreferNoSchedule"]]


def make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_make_n_kind_e2e_builds_loads_and_runs_the_real_node_tests() -> None:
    out = make("-n", "kind-e2e", "IMAGE=op:t", "RUNNER_IMAGE=run:t", "KIND_CLUSTER=kc")
    assert out.returncode == 0, out.stderr
    text = out.stdout.replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]

    def first(pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no line matching {pattern!r} in:\n{out.stdout}"
        return hits[0]

    check = first(r"docker info")
    build = first(r"^docker build -t op:t \.$")
    runner = first(r"^docker build -t run:t examples/runner$")
    create = first(r"kind create cluster --name kc --config hack/kind-config.yaml --image kindest/node:v1\.\d+")
    load = first(r"^kind load docker-image op:t run:t --name kc$")
    test = first(r"pytest -m \"realnode and not localnode\"")
    assert check < build < runner < create < load < test
    cmd = shlex.split(lines[test])
    env = dict(a.split("=", 1) for a in cmd if re.match(r"^[A-Z_]+=", a))
    assert env["NECROCODE_TEST_IMAGE"] == "op:t" and env["NECROCODE_TEST_RUNNER_IMAGE"] == "run:t"
    assert env["NECROCODE_TEST_REQUIRE_REALNODE"] == "1"
    assert env["KUBECONFIG"].endswith("kind-kc.kubeconfig")
    assert "kind get kubeconfig --name kc > " + env["KUBECONFIG"] in lines[first(r"kind get kubeconfig")]
    assert cmd[-2:] == ["tests/cluster/test_realnode.py", "tests/cluster/test_realnode_helm.py"]


def test_the_kind_node_image_has_mutating_admission_policy_v1() -> None:
    out = make("-n", "kind-e2e")
    [minor] = re.findall(r"--image kindest/node:v1\.(\d+)\.", out.stdout)
    assert int(minor) >= 36, "MutatingAdmissionPolicy v1 (deploy/requester-policy.yaml) is GA in 1.36"


def test_kind_e2e_fails_early_without_kind_or_docker(tmp_path: Path) -> None:
    no_kind = make("kind-e2e", "KIND=kind-not-installed-here")
    assert no_kind.returncode == 2, no_kind.stdout + no_kind.stderr
    assert "not found: kind-not-installed-here" in no_kind.stderr
    assert "docker build" not in no_kind.stdout  # nothing ran
    # a docker CLI whose engine is not there (this machine's own case)
    for name, code in (("docker", 1), ("kind", 0)):
        stub = tmp_path / name
        stub.write_text(f"#!/bin/sh\nexit {code}\n")
        stub.chmod(0o755)
    no_engine = make("kind-e2e", f"DOCKER={tmp_path / 'docker'}", f"KIND={tmp_path / 'kind'}")
    assert no_engine.returncode == 2
    assert "needs a running Docker engine" in no_engine.stderr, no_engine.stderr


def test_the_runner_dockerfile_makes_the_image_built_without_docker() -> None:
    dockerfile = REPO / "examples" / "runner" / "Dockerfile"
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split(None, 1) for line in dockerfile.read_text().splitlines() if line and not line[0] == "#"]
    instr = {k: v for k, v in lines}
    img = ociimage.runner_image()
    scripts = sorted(p.name for p in (REPO / "examples" / "runner").glob("*.sh"))
    assert sorted(instr["COPY"].split()[:-1]) == scripts and instr["COPY"].split()[-1] == "/runner/"
    assert sorted(p.split("/")[-1] for p in img.files if p.startswith("runner/")) == scripts
    assert yaml.safe_load(instr["ENTRYPOINT"]) == img.config["Entrypoint"]
    assert instr["WORKDIR"] == img.config["WorkingDir"]
    ignore = (REPO / "examples" / "runner" / ".dockerignore").read_text().split()
    assert ignore[0] == "*" and sorted(x.lstrip("!") for x in ignore[1:]) == scripts


def _wait(cond: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _run(script: str, tmp: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    art, msg = tmp / "artifacts", tmp / "termination-log"
    msg.write_text("")  # the kubelet creates the file; the runners write it only where it exists
    env = {**os.environ, "ARTIFACT_DIR": str(art), "PODINFO_DIR": str(tmp / "podinfo"),
           "STEP_SECONDS": "0.05", "TERMINATION_LOG": str(msg)}
    proc = subprocess.Popen(["sh", str(REPO / "examples" / "runner" / script)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait(lambda: (art / "progress").exists(), f"{script}'s first step")
    return proc, art, msg


def test_the_runners_report_is_their_termination_message(tmp_path: Path) -> None:
    (tmp_path / "podinfo").mkdir()
    (tmp_path / "podinfo" / "annotations").write_text(
        'necrocode.io/cancel-requested="{\\"reason\\": \\"a b\\", \\"by\\": \\"x\\"}"\n')
    proc, art, msg = _run("runner.sh", tmp_path)
    _wait(lambda: (art / "cancel-requested").exists(), "the annotation seen")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "working (step 1)" in out and "cancel requested (" in out
    report = parse_report(msg.read_text())
    assert msg.read_text() == (art / "result").read_text().strip()
    assert report["ended"] == "sigterm" and int(report["steps"]) >= 1
    assert report["cancel-requested"] == '{"reason": "a b", "by": "x"}'
    assert report["boot"] == BOOT_ID and float(report["up"]) > 0  # the same kernel's clock


def test_the_stubborn_runner_reports_each_step_until_killed(tmp_path: Path) -> None:
    proc, art, msg = _run("ignore-sigterm.sh", tmp_path)
    proc.send_signal(signal.SIGTERM)  # ignored
    # waits on the termination message itself: the script writes it after `progress`, so a kill
    # right after `progress` said 3 could find the message still at 2 (a CI run did)
    _wait(lambda: int(parse_report(msg.read_text()).get("steps") or 0) >= 3, "more steps reported after SIGTERM")
    proc.kill()
    proc.communicate(timeout=10)
    report = parse_report(msg.read_text())
    assert "ended" not in report and int(report["steps"]) >= 3 and report["cancel-requested"] == "none"
    assert int((art / "progress").read_text()) >= int(report["steps"])  # `progress` is written first
    assert not (art / "result").exists()  # nothing saved beyond progress
    assert report["boot"] == BOOT_ID
