"""Every example in examples/ applied to the real control plane, and the outcome it promises
checked, so the examples never rot.

Each YAML file directly in examples/ (examples/runner/ is the reference runner image, tested by
the real-node tests) is applied as its header says, `kubectl apply -n NS -f examples/NAME.yaml`
with the real kubectl, into a namespace holding the job it cancels: job1, whose tasks are
build-api (running) <- test-api (pending) <- deploy-api (pending), lint (running) and docs (done),
with kwok runners holding repo slots, and scratch and an artifact of build-api. A new example
fails here until OUTCOMES says what it must do. One override: ttl.yaml's TTL (an hour, as a user
would set it) is applied as 1 s, so the test sees the record go. examples/dispatcher.py is run
once with --once and once following events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import ClusterInfo, Kubectl, absent, wait_for

pytestmark = pytest.mark.usefixtures("operator")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
JOB = "job1"
TASKS = ("build-api", "test-api", "deploy-api", "lint", "docs")
RUNNERS = ["job1-build-api-runner", "job1-lint-runner"]


def kubectl(cluster: ClusterInfo) -> str:
    from hack.localcluster import CACHE

    path = (cluster.bins or CACHE / "bin") / "kubectl"
    if not path.exists():
        pytest.skip("kubectl not built (make tools)")
    return str(path)


def build_job1(kube: Kubectl, ns: str, stop: str) -> None:
    kube.create_job(ns, JOB)
    for tid in ("build-api", "lint"):
        pod = f"{JOB}-{tid}-runner"
        kube.create_runner(ns, JOB, tid, stop=stop, name=pod)
        kube.create_lease(ns, f"slot-{tid}", job=JOB, task_id=tid, holder=pod)
        kube.create_task(ns, JOB, tid, "Running", runner=pod, slot=f"slot-{tid}")
    kube.create_task(ns, JOB, "test-api", "Pending", depends_on=["build-api"])
    kube.create_task(ns, JOB, "deploy-api", "Pending", depends_on=["test-api"])
    kube.create_task(ns, JOB, "docs", "Done")
    kube.create_configmap(ns, "job1-build-api-scratch", JOB, "scratch", task_id="build-api")
    kube.create_configmap(ns, "job1-build-api-diff", JOB, "artifact", task_id="build-api")
    wait_for(lambda: [p.status.phase for p in kube.pods(ns, "necrocode.io/role=runner")] == ["Running"] * 2,
             what="runners Running")


def states(kube: Kubectl, ns: str) -> dict[str, str]:
    return {t: kube.task(ns, JOB, t)["status"]["state"] for t in TASKS}


def runners(kube: Kubectl, ns: str) -> list[str]:
    return sorted(p.metadata.name for p in kube.pods(ns, "necrocode.io/role=runner"))


def holder(kube: Kubectl, ns: str, slot: str) -> str | None:
    return kube.coord.read_namespaced_lease(slot, ns).spec.holder_identity  # type: ignore[no-any-return]


def configmaps(kube: Kubectl, ns: str) -> set[str]:
    return {c.metadata.name for c in kube.core.list_namespaced_config_map(ns).items}


def world(kube: Kubectl, ns: str) -> dict[str, str]:
    """The resourceVersion of everything a cancellation could change."""
    out = {f"pod/{p.metadata.name}": p.metadata.resource_version for p in kube.core.list_namespaced_pod(ns).items}
    out |= {f"lease/{x.metadata.name}": x.metadata.resource_version for x in kube.coord.list_namespaced_lease(ns).items}
    out |= {f"cm/{c.metadata.name}": c.metadata.resource_version for c in kube.core.list_namespaced_config_map(ns).items}
    for plural in ("agentjobs", "agenttasks"):
        for o in kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", ns, plural)["items"]:
            out[f"{plural}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    return out


# ---------------------------------------------------------------------------- the outcomes promised
def whole_job_cancelled(kube: Kubectl, ns: str, obj: dict[str, Any]) -> None:
    st = obj["status"]
    assert st["phase"] == "Completed", st
    assert states(kube, ns) == {"build-api": "Cancelled", "test-api": "Cancelled", "deploy-api": "Cancelled",
                                "lint": "Cancelled", "docs": "Done"}
    assert runners(kube, ns) == []
    job = kube.get("agentjobs", ns, JOB)
    assert job["status"]["phase"] == "Cancelled" and job["spec"]["dispatch"]["blocked"] is True
    assert holder(kube, ns, "slot-build-api") is None and holder(kube, ns, "slot-lint") is None
    cms = configmaps(kube, ns)
    assert "job1-build-api-diff" in cms and "job1-build-api-scratch" not in cms  # artifact kept, scratch gone
    assert kube.task(ns, JOB, "lint")["status"]["cancellation"]["reason"] == obj["spec"]["reason"]


def graceful(kube: Kubectl, ns: str, obj: dict[str, Any], before: dict[str, str]) -> None:
    whole_job_cancelled(kube, ns, obj)
    p = obj["status"]["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (2, 2, 0)
    assert {s["name"]: s["state"] for s in obj["status"]["steps"]}["SignalRunners"] == "Succeeded"


def forced(kube: Kubectl, ns: str, obj: dict[str, Any], before: dict[str, str]) -> None:
    """The runners are on a lost node (they never stop by themselves): force takes them at once."""
    whole_job_cancelled(kube, ns, obj)
    p = obj["status"]["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (2, 2, 2)
    assert obj["status"]["runnerSummary"] == "2/2 (2 forced)"
    assert {s["name"]: s["state"] for s in obj["status"]["steps"]}["SignalRunners"] == "Skipped"


def task_only(kube: Kubectl, ns: str, obj: dict[str, Any], dependents: str) -> None:
    st = obj["status"]
    assert st["phase"] == "Completed", st
    assert states(kube, ns) == {"build-api": "Cancelled", "test-api": dependents, "deploy-api": dependents,
                                "lint": "Running", "docs": "Done"}
    assert runners(kube, ns) == ["job1-lint-runner"]
    assert holder(kube, ns, "slot-build-api") is None and holder(kube, ns, "slot-lint") == "job1-lint-runner"
    job = kube.get("agentjobs", ns, JOB)
    assert job["status"]["phase"] == "Running" and job["spec"]["dispatch"]["blocked"] is False


def cascaded(kube: Kubectl, ns: str, obj: dict[str, Any], before: dict[str, str]) -> None:
    task_only(kube, ns, obj, "Cancelled")
    assert obj["status"]["progress"]["tasksCancelled"] == 3
    assert kube.task(ns, JOB, "deploy-api")["status"]["cancellation"]["reason"] == "dependency build-api cancelled"


def not_cascaded(kube: Kubectl, ns: str, obj: dict[str, Any], before: dict[str, str]) -> None:
    task_only(kube, ns, obj, "Blocked")
    assert (obj["status"]["progress"]["tasksCancelled"], obj["status"]["progress"]["tasksBlocked"]) == (1, 2)
    test_api = kube.task(ns, JOB, "test-api")["status"]
    assert test_api["blockedBy"] == obj["metadata"]["name"] and test_api["message"] == "dependency build-api cancelled"


def planned_only(kube: Kubectl, ns: str, obj: dict[str, Any], before: dict[str, str]) -> None:
    st = obj["status"]
    assert st["phase"] == "Completed", st
    assert sorted(st["plan"]["runnerPods"]) == RUNNERS
    assert sorted(st["plan"]["leases"]) == ["slot-build-api", "slot-lint"]
    assert st["plan"]["scratchResources"] == ["configmap/job1-build-api-scratch"]
    assert st["plan"]["artifacts"] == ["configmap/job1-build-api-diff"]
    assert sorted(a["taskId"] for a in st["affectedTasks"]) == ["build-api", "deploy-api", "lint", "test-api"]
    assert world(kube, ns) == before


def forgotten(kube: Kubectl, ns: str, obj: dict[str, Any], before: dict[str, str]) -> None:
    whole_job_cancelled(kube, ns, obj)
    wait_for(lambda: absent(lambda: kube.get("jobcancellations", ns, obj["metadata"]["name"])), timeout=30,
             what="the record deleted after its TTL")


@dataclass
class Outcome:
    check: Callable[[Kubectl, str, dict[str, Any], dict[str, str]], None]  # (kube, ns, the finished record, world before)
    runners_stop: str = "immediate"  # how the kwok runners stop: immediate | never (a lost node)
    overrides: dict[str, Any] = field(default_factory=dict)  # spec fields applied instead of the file's


OUTCOMES: dict[str, Outcome] = {
    "cancel-job.yaml": Outcome(graceful),
    "cancel-job-force.yaml": Outcome(forced, runners_stop="never"),
    "cancel-task-cascade.yaml": Outcome(cascaded),
    "cancel-task-no-cascade.yaml": Outcome(not_cascaded),
    "dry-run.yaml": Outcome(planned_only),
    "ttl.yaml": Outcome(forgotten, overrides={"ttlSecondsAfterFinished": 1}),
}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_does_what_it_says(kube: Kubectl, cluster: ClusterInfo, namespace: str, tmp_path: Path,
                                   example: str) -> None:
    ns, path = namespace, EXAMPLES / example
    if example not in OUTCOMES:
        pytest.fail(f"examples/{example} has no expected outcome: add one to OUTCOMES in {Path(__file__).name}")
    outcome = OUTCOMES[example]
    text = path.read_text()
    assert text.startswith("# ") and f"kubectl apply -n team-a -f examples/{example}" in text, "header: what and how"
    [doc] = [d for d in yaml.safe_load_all(text) if d]
    assert "namespace" not in doc["metadata"], "no namespace in the file: `kubectl apply -n` puts it anywhere"
    assert doc["spec"]["jobName"] == JOB
    if outcome.overrides:
        assert set(outcome.overrides) <= set(doc["spec"]), "an override replaces a field the example sets"
        doc["spec"].update(outcome.overrides)
        path = tmp_path / example
        path.write_text(yaml.safe_dump(doc))

    build_job1(kube, ns, outcome.runners_stop)
    before = world(kube, ns)
    applied = subprocess.run([kubectl(cluster), "apply", "-n", ns, "-f", str(path)], capture_output=True, text=True,
                             env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    assert applied.returncode == 0, applied.stderr
    plural = {"JobCancellation": "jobcancellations", "TaskCancellation": "taskcancellations"}[doc["kind"]]
    assert applied.stdout.strip() == f"{doc['kind'].lower()}.necrocode.io/{doc['metadata']['name']} created"
    outcome.check(kube, ns, kube.wait_phase(plural, ns, doc["metadata"]["name"]), before)


# ---------------------------------------------------------------------------- examples/dispatcher.py
def dispatcher(cluster: ClusterInfo, ns: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / "dispatcher.py"), "-n", ns, "--kubeconfig", str(cluster.kubeconfig), *args]


def test_the_dispatcher_example_skips_cancelled_and_paused_jobs_and_drops_queued_work(
        kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    for job in ("job1", "job2", "job3"):
        kube.create_job(ns, job)
    kube.cancel_job(ns, "stop-job2", "job2")
    assert kube.wait_phase("jobcancellations", ns, "stop-job2")["status"]["phase"] == "Completed"

    once = subprocess.run(dispatcher(cluster, ns, "--once", "--pause", "job3", "job1/a", "job2/b", "job3/c", "job1/d"),
                          capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert once.stdout.splitlines() == [
        "paused job3: none of its tasks will be assigned",
        "assign job1/a",
        "skip job2/b: job job2 is cancelled or its dispatch blocked",
        "skip job3/c: job job3 is cancelled or its dispatch blocked",
        "assign job1/d"]
    assert kube.get("agentjobs", ns, "job3")["spec"]["dispatch"]["blocked"] is True

    # following: one assignment an hour, so job1/b is still queued when job1's cancellation comes
    proc = subprocess.Popen(dispatcher(cluster, ns, "--interval", "3600", "job1/a", "job1/b", "job1/c"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout or []:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: "assign job1/a" in lines, what="the first assignment", timeout=30)
        kube.cancel_job(ns, "stop-job1", "job1")
        dropped = "drop job1/b job1/c: job job1 is being cancelled (JobCancellation stop-job1)"
        wait_for(lambda: dropped in lines, what=f"{dropped!r} in {lines}", timeout=30)
        assert "following JobCancellations in " + ns in lines
        assert any(line.startswith("event ") and "JobCancellation/stop-job1 job=job1" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, lines
        wait_for(lambda: lines[-1:] == ["stopped with 0 task(s) queued"], what=f"the last line of {lines}", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
