"""The operator killed (SIGKILL) inside each of the eight steps of a JobCancellation, then
started again: the cancellation ends Completed with exact counts, every runner gone, every
lease released, each AgentTask cancelled exactly once.

The first operator talks to the API server through a delaying TCP proxy (tests/support/faultproxy.py),
so every request it makes takes a while and a kill sent when its log shows `step started` for
the step lands inside the step (asserted: no `step finished` for it). Each step is killed at
the moment that is hardest for it (KILL_AT):

- "start": at once. The status of the step before is written in the background and is then
  usually not yet stored: the new operator resumes the step before, and must still count what
  it did (runners that are gone, tasks already cancelled).
- "first write": once the step's first write is visible in the cluster. The answer to it is
  still held in the proxy, so the operator dies without having seen it, and the requests it
  had in flight reach the API server after its death: the new operator meets writes that
  nobody recorded.

UpdateTaskStates is killed at both. The second operator is started beforehand, imported and
waiting on stdin, so a case costs little more than the cancellation itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.support.faultproxy import FaultProxy, proxy_kubeconfig
from tests.support.kube import ClusterInfo, Kubectl, json_lines, operator_env, wait_for

STEPS = ["Validate", "BlockDispatch", "ClassifyTasks", "SignalRunners", "TerminateRunners",
         "UpdateTaskStates", "CleanupResources", "Verify"]
DELAY = 0.1  # seconds before each forwarded chunk, both ways: every request takes >= 0.2 s

RUNNING = ["r0", "r1", "r2"]
OTHER_STATES = {"pend": "Pending", "ready": "Ready", "blocked": "Blocked", "done": "Done", "failed": "Failed"}
UNFINISHED = [*RUNNING, "pend", "ready", "blocked"]
EXPECTED = {"runnersTotal": 3, "runnersTerminated": 3, "runnersForced": 0, "tasksCancelled": 6,
            "tasksUnaffected": 2, "leasesReleased": 3, "resourcesDeleted": 2, "artifactsPreserved": 2}

# imports everything, then waits for a line on stdin before it starts: a warm spare operator
WARM = ("import sys, necrocode.main, necrocode.handlers; sys.stdin.readline(); "
        "sys.exit(necrocode.main.main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def proxy(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultProxy, Path]]:
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    url = urlparse(server)
    with FaultProxy(url.hostname or "127.0.0.1", url.port or 443) as p:
        yield p, proxy_kubeconfig(cluster.kubeconfig, tmp_path_factory.mktemp("proxy") / "kubeconfig", p)


def operator(cluster: ClusterInfo, ns: str, log: Path, kubeconfig: Path | None = None,
             warm: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, **operator_env(cluster)}
    if kubeconfig is not None:
        env.update(KUBECONFIG=str(kubeconfig), NECROCODE_KUBECONFIG=str(kubeconfig))
    args = ["--namespace", ns, "--liveness", ""]
    cmd = [sys.executable, "-c", WARM, *args] if warm else [sys.executable, "-m", "necrocode.main", *args]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if warm else subprocess.DEVNULL,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def go(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()


def step_log(log: Path, event: str, step: str) -> bool:
    """Does the operator's log show `event` for `step`? (cheap: scans the raw text first)"""
    text = log.read_text()
    if f'"{step}"' not in text:
        return False
    return any(e.get("event") == event and e.get("step") == step for e in json_lines(log))


def _job(kube: Kubectl, ns: str) -> dict[str, Any]:
    return kube.get("agentjobs", ns, "job")


def _runners(kube: Kubectl, ns: str) -> list[Any]:
    return kube.pods(ns, "necrocode.io/role=runner")


def _released(kube: Kubectl, ns: str) -> bool:
    leases = [kube.coord.read_namespaced_lease(f"slot-{t}", ns) for t in RUNNING]
    return any(not lease.spec.holder_identity for lease in leases)


# the first write of each step, as seen in the cluster (None: the step writes only its status)
FIRST_WRITE: dict[str, Callable[[Kubectl, str], bool] | None] = {
    "Validate": lambda k, ns: "necrocode.io/cancelled-by" in (_job(k, ns)["metadata"].get("annotations") or {}),
    # the claim blocked dispatch in Validate's write: BlockDispatch writes the phase
    "BlockDispatch": lambda k, ns: (_job(k, ns).get("status") or {}).get("phase") == "Cancelling",
    "ClassifyTasks": None,
    "SignalRunners": lambda k, ns: any("necrocode.io/cancel-requested" in (p.metadata.annotations or {})
                                       for p in _runners(k, ns)),
    "TerminateRunners": lambda k, ns: len(_runners(k, ns)) < len(RUNNING)
    or any(p.metadata.deletion_timestamp for p in _runners(k, ns)),
    "UpdateTaskStates": lambda k, ns: any((k.task(ns, "job", t).get("status") or {}).get("state") == "Cancelled"
                                          for t in UNFINISHED),
    "CleanupResources": _released,
    "Verify": None,
}


def make_job(kube: Kubectl, ns: str) -> None:
    kube.create_job(ns, "job")
    for t in RUNNING:
        kube.create_runner(ns, "job", t, stop="immediate", signal=True)  # SignalRunners writes to them
        kube.create_task(ns, "job", t, "Running", runner=f"job-{t}-runner", slot=f"slot-{t}")
        kube.create_lease(ns, f"slot-{t}", job="job", task_id=t, holder=f"job-{t}-runner")
    for t, state in OTHER_STATES.items():
        kube.create_task(ns, "job", t, state)
    kube.create_lease(ns, "slot-free", job=None)  # the pool's, held by no job: not ours
    kube.create_lease(ns, "slot-other", job="other", task_id="x", holder="other-x-runner")
    kube.create_configmap(ns, "scratch-job", "job", "scratch")
    kube.create_configmap(ns, "scratch-r0", "job", "scratch", task_id="r0")
    kube.create_configmap(ns, "artifact-r0", "job", "artifact", task_id="r0")
    kube.create_configmap(ns, "artifact-r1", "job", "artifact", task_id="r1")
    kube.create_configmap(ns, "other-scratch", "other", "scratch")


KILL_AT = [("Validate", "first write"), ("BlockDispatch", "first write"), ("ClassifyTasks", "start"),
           ("SignalRunners", "first write"), ("TerminateRunners", "first write"), ("UpdateTaskStates", "start"),
           ("UpdateTaskStates", "first write"), ("CleanupResources", "first write"), ("Verify", "start")]
assert {s for s, _ in KILL_AT} == set(STEPS)


@dataclass
class Operators:
    first_log: Path
    second_log: Path
    first: subprocess.Popen[bytes] = field(init=False)
    second: subprocess.Popen[bytes] = field(init=False)


@contextmanager
def two_operators(cluster: ClusterInfo, ns: str, tmp_path: Path, proxy: tuple[FaultProxy, Path]) -> Iterator[Operators]:
    """The first operator, through the proxy, and a warm spare to take over once it is killed;
    both stopped at the end, whatever happened, with the proxy letting everything through."""
    fp, proxied = proxy
    fp.passthrough()
    ops = Operators(tmp_path / "first.log", tmp_path / "second.log")
    ops.first = operator(cluster, ns, ops.first_log, kubeconfig=proxied)
    ops.second = operator(cluster, ns, ops.second_log, warm=True)  # imports while the first works
    try:
        yield ops
    finally:
        fp.passthrough()
        for p in (ops.first, ops.second):
            if p.poll() is None:
                p.terminate()  # before stdin closes: a spare never started must not start now
                if p.stdin is not None and not p.stdin.closed:
                    p.stdin.close()
                p.wait(timeout=20)


def cancel_and_kill_inside(kube: Kubectl, ns: str, fp: FaultProxy, ops: Operators, step: str, moment: str) -> None:
    """Cancel the job (made beforehand) and SIGKILL the first operator inside `step`, at `moment`
    (KILL_AT); the proxy lets everything through again afterwards."""
    wait_for(lambda: "operator started" in ops.first_log.read_text(), timeout=30, what="the first operator")
    fp.delay(DELAY)
    kube.cancel_job(ns, "stop", "job", gracePeriodSeconds=5, escalateAfterSeconds=2)
    wait_for(lambda: step_log(ops.first_log, "step started", step), timeout=60, interval=0.02,
             what=f"step {step} started")
    probe = FIRST_WRITE[step]
    if moment == "first write":
        assert probe is not None
        wait_for(lambda: probe(kube, ns), timeout=10, interval=0.02, what=f"the first write of {step}")
    ops.first.send_signal(signal.SIGKILL)
    ops.first.wait(timeout=10)
    fp.passthrough()
    assert not step_log(ops.first_log, "step finished", step), f"the kill landed after {step} finished"


@pytest.mark.parametrize(("step", "moment"), KILL_AT, ids=[f"{s}-{m.replace(' ', '-')}" for s, m in KILL_AT])
def test_operator_killed_inside_each_step_finishes_with_exact_counts(
        step: str, moment: str, kube: Kubectl, cluster: ClusterInfo, solo_namespace: str, tmp_path: Path,
        proxy: tuple[FaultProxy, Path]) -> None:
    ns = solo_namespace
    with two_operators(cluster, ns, tmp_path, proxy) as ops:
        make_job(kube, ns)
        cancel_and_kill_inside(kube, ns, proxy[0], ops, step, moment)
        killed_at = time.monotonic()
        go(ops.second)
        st = kube.wait_phase("jobcancellations", ns, "stop", timeout=60)["status"]
        print(f"\n{step}: recovered {time.monotonic() - killed_at:.1f}s after the kill", file=sys.stderr)
    second_log = ops.second_log

    second_events = json_lines(second_log)
    tail = "\n".join(json.dumps(e) for e in second_events[-40:])
    assert st["phase"] == "Completed", (st, tail)
    assert {k: st["progress"].get(k) for k in EXPECTED} == EXPECTED, (st["progress"], st.get("cleanup"), tail)
    assert all(s["state"] == "Succeeded" for s in st["steps"]), st["steps"]
    assert not st.get("errors"), st["errors"]

    # every runner gone, every lease of the job released, scratch deleted, artifacts kept
    assert kube.pods(ns, "necrocode.io/job=job") == []
    for t in RUNNING:
        lease = kube.coord.read_namespaced_lease(f"slot-{t}", ns)
        assert not lease.spec.holder_identity and "necrocode.io/job" not in (lease.metadata.labels or {})
    other = kube.coord.read_namespaced_lease("slot-other", ns)
    assert other.spec.holder_identity == "other-x-runner" and other.metadata.labels["necrocode.io/job"] == "other"
    cms = {c.metadata.name for c in kube.core.list_namespaced_config_map(ns).items}
    assert {"artifact-r0", "artifact-r1", "other-scratch"} <= cms
    assert not {"scratch-job", "scratch-r0"} & cms

    # each unfinished task cancelled exactly once: one record (its previous state is the real
    # one, not Cancelled) and one Event; the finished ones untouched
    before = {**{t: "Running" for t in RUNNING}, **OTHER_STATES}
    for t in UNFINISHED:
        task = kube.task(ns, "job", t)["status"]
        assert task["state"] == "Cancelled", (t, task)
        assert task["cancellation"]["cancelledBy"] == "stop" and task["cancellation"]["previousState"] == before[t]
        evs = [e for e in kube.events_for(ns, f"job-{t}") if e.reason == "Cancelled"]
        assert len(evs) == 1 and (evs[0].count or 1) == 1, (t, evs)
    for t in ("done", "failed"):
        task = kube.task(ns, "job", t)["status"]
        assert task["state"] == OTHER_STATES[t] and not task.get("cancellation")
    assert kube.get("agentjobs", ns, "job")["status"]["phase"] == "Cancelled"


# ----------------------------------------------------------------------------- Verify finds and repairs
def test_verify_repairs_what_a_late_writer_undid_while_no_operator_ran(
        kube: Kubectl, cluster: ClusterInfo, solo_namespace: str, tmp_path: Path,
        proxy: tuple[FaultProxy, Path]) -> None:
    """Verify's own work: the operator is killed as Verify starts, and while none runs a
    dispatcher that had not seen the block undoes part of the cancellation (it marks a
    cancelled task Running, takes a released slot for it, and writes the job's phase Running;
    its runner pod is refused at admission).
    The next operator's Verify finds each of them, repairs them once, finds nothing left, and
    the cancellation ends Completed; nothing of it is reported as an error."""
    ns = solo_namespace
    with two_operators(cluster, ns, tmp_path, proxy) as ops:
        make_job(kube, ns)
        cancel_and_kill_inside(kube, ns, proxy[0], ops, "Verify", "start")
        # the late dispatcher's writes (the slot of a runner that is gone, given to task pend)
        kube.patch_status("agenttasks", ns, "job-pend", {"state": "Running"})
        kube.coord.patch_namespaced_lease("slot-r1", ns, {
            "metadata": {"labels": {"necrocode.io/job": "job", "necrocode.io/task": "pend"}},
            "spec": {"holderIdentity": "job-pend-runner"}})
        kube.patch_status("agentjobs", ns, "job", {"phase": "Running"})
        # its runner for the task is refused: dispatch stays blocked while no operator runs
        with pytest.raises(ApiException) as refused:
            kube.create_runner(ns, "job", "pend")
        assert refused.value.status == 403 and "dispatch is blocked" in refused.value.body, refused.value
        go(ops.second)
        st = kube.wait_phase("jobcancellations", ns, "stop", timeout=60)["status"]

    found = [e for e in json_lines(ops.second_log) if e.get("event") == "inconsistency found; repairing once"]
    assert len(found) == 1, json_lines(ops.second_log)[-40:]
    remaining = {tuple(x) for x in found[0]["remaining"]}
    # the slot can also be released again by CleanupResources, when the kill came before its
    # finished status was stored and the next operator resumes there; the rest only Verify sees
    assert {("agenttask/job-pend", "task still Pending, Ready or Running"),
            ("agentjob", "job phase is Running, not Cancelled")} <= remaining <= {
        ("agenttask/job-pend", "task still Pending, Ready or Running"),
        ("agentjob", "job phase is Running, not Cancelled"),
        ("lease/slot-r1", "repo slot still held for the job")}, remaining

    assert st["phase"] == "Completed", st
    verify = next(s for s in st["steps"] if s["name"] == "Verify")
    assert (verify["state"], verify["message"]) == ("Succeeded", "repaired an inconsistency; now consistent"), verify
    assert not st.get("errors"), st["errors"]
    assert st["progress"]["leasesReleased"] == 3, st["progress"]
    # repaired: the task Cancelled again, the slot free and no longer the job's, the job Cancelled
    task = kube.task(ns, "job", "pend")["status"]
    assert task["state"] == "Cancelled" and task["cancellation"]["cancelledBy"] == "stop", task
    assert task["cancellation"]["previousState"] == "Pending", task  # before the cancellation, not the late write
    assert {"name": "job-pend", "before": "Pending"}.items() <= next(
        a for a in st["affectedTasks"] if a["name"] == "job-pend").items(), st["affectedTasks"]
    lease = kube.coord.read_namespaced_lease("slot-r1", ns)
    assert not lease.spec.holder_identity and "necrocode.io/job" not in (lease.metadata.labels or {})
    assert kube.get("agentjobs", ns, "job")["status"]["phase"] == "Cancelled"
    assert kube.pods(ns, "necrocode.io/job=job") == []


# ----------------------------------------------------------------------------- late status writes
async def test_a_status_write_landing_after_another_run_finished_the_record_is_refused(
        kube: Kubectl, cluster: ClusterInfo, solo_namespace: str) -> None:
    """The case the kills above can meet by chance (CI, once): the killed operator's last status
    PATCH, held on the wire, reaches the API server after the new operator finished the record.
    It carries the resourceVersion its sender last saw, so the API server refuses it, and the
    final status stays; a live writer that meets the final status drops its write. Meanwhile a
    write that conflicts with anything else (a label) is re-read and goes in."""
    from necrocode.clock import SystemClock
    from necrocode.kube import Conflict, Kube, load_credentials, nc_path
    from necrocode.logs import Bound
    from necrocode.model import JOB_CANCELLATION, CancellationStatus, Phase
    from necrocode.tracker import CancellationTracker

    ns = solo_namespace
    k = Kube(load_credentials(str(cluster.kubeconfig)))

    def tracker(name: str, status: CancellationStatus, rv: str | None) -> CancellationTracker:
        return CancellationTracker(k, JOB_CANCELLATION, ns, name, status, interval=1.0, clock=SystemClock(),
                                   log=Bound(cancellation=name), resource_version=rv)

    def stored(name: str) -> dict[str, Any]:
        return kube.get("jobcancellations", ns, name)

    try:
        created = kube.cancel_job(ns, "stop", "job")
        first = tracker("stop", CancellationStatus(phase=Phase.RUNNING, message="first run"),
                        created["metadata"]["resourceVersion"])
        await first.flush()
        on_the_wire = {"metadata": {"resourceVersion": first.resource_version},
                       "status": {"phase": "Running", "message": "first run, late"}}
        # the second run resumes from what is stored and finishes it
        body = stored("stop")
        second = tracker("stop", CancellationStatus.model_validate(body["status"]), body["metadata"]["resourceVersion"])
        second.status.phase, second.status.message = Phase.COMPLETED, "second run: done"
        await second.flush()
        # the first run's write lands now: refused by the API server
        with pytest.raises(Conflict):
            await k.merge_patch(nc_path(ns, "jobcancellations", "stop", "status"), on_the_wire)
        # and a first run still alive drops its write once it sees the final status
        first.status.message = "first run, later"
        await first.flush()
        assert first.superseded
        st = stored("stop")["status"]
        assert (st["phase"], st["message"]) == ("Completed", "second run: done"), st

        # any other write in between (here a label) only makes the next status write re-read
        created = kube.cancel_job(ns, "other", "job")
        t = tracker("other", CancellationStatus(phase=Phase.RUNNING, message="one"),
                    created["metadata"]["resourceVersion"])
        await t.flush()
        kube.custom.patch_namespaced_custom_object("necrocode.io", "v1alpha1", ns, "jobcancellations", "other",
                                                   {"metadata": {"labels": {"someone": "else"}}})
        t.status.message = "two"
        await t.flush()
        assert not t.superseded
        assert stored("other")["status"]["message"] == "two"
    finally:
        await k.close()
