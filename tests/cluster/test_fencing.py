"""Leader fencing: a leader paused (SIGSTOP) past its lease while it terminates runners, whose
standby takes the Lease and finishes the cancellation, makes no write once it is resumed; it
stops and exits non-zero, and the cancellation's counts are exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hack.localcluster import free_port
from tests.cluster.test_high_availability import holder
from tests.cluster.test_metrics_and_logs import Samples, scrape
from tests.support.kube import ClusterInfo, Kubectl, json_lines, operator_env, wait_for
from tests.support.operators import stop

LEASE, DEADLINE, RETRY = 6, 4.0, 0.5
RUNNERS = 4
# seconds a runner takes to stop after its deletion (its grace is 30): longer than the takeover
# (pause ~1-2 s after the deletions + a lease), so the new leader finds them still stopping
STOP_AFTER = 14


def replica(cluster: ClusterInfo, ns: str, log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **operator_env(cluster, metrics_port)}
    return subprocess.Popen(
        [sys.executable, "-m", "necrocode.main", "--namespace", ns, "--liveness", "", "--leader-elect",
         "--leader-namespace", ns, "--leader-lease-seconds", str(LEASE),
         "--leader-renew-deadline-seconds", str(DEADLINE), "--leader-retry-seconds", str(RETRY)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def writes(samples: Samples) -> dict[str, float]:
    """necrocode_api_requests_total of the verbs that write."""
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        verb = dict(labels).get("verb")
        if name == "necrocode_api_requests_total" and verb not in ("GET", "WATCH"):
            out[str(verb)] = out.get(str(verb), 0) + v
    return out


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def snapshot(kube: Kubectl, ns: str) -> dict[tuple[str, str], str]:
    """resourceVersion of every object a cancellation may write (the leader Lease excepted)."""
    out: dict[tuple[str, str], str] = {}
    for plural in ("agentjobs", "agenttasks", "jobcancellations"):
        for o in kube.custom.list_namespaced_custom_object("necrocode.io", "v1alpha1", ns, plural)["items"]:
            out[(plural, o["metadata"]["name"])] = o["metadata"]["resourceVersion"]
    for kind, items in (("pods", kube.core.list_namespaced_pod(ns).items),
                        ("configmaps", kube.core.list_namespaced_config_map(ns).items),
                        ("events", kube.core.list_namespaced_event(ns).items),
                        ("leases", kube.coord.list_namespaced_lease(ns).items)):
        for o in items:
            if kind == "leases" and o.metadata.name == "necrocode-cancel-leader":
                continue
            out[(kind, o.metadata.name)] = o.metadata.resource_version
    return out


def test_a_paused_leader_makes_no_write_after_resuming(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str,
                                                       tmp_path: Path) -> None:
    ns = solo_namespace
    kube.create_job(ns, "job")
    for i in range(RUNNERS):
        t = f"t{i}"
        kube.create_runner(ns, "job", t, stop="slow", after=STOP_AFTER, grace=30)
        kube.create_task(ns, "job", t, "Running", runner=f"job-{t}-runner", slot=f"slot-{t}")
        kube.create_lease(ns, f"slot-{t}", job="job", task_id=t, holder=f"job-{t}-runner")
    kube.create_task(ns, "job", "pending", "Pending")
    kube.create_task(ns, "job", "done", "Done")
    kube.create_configmap(ns, "scratch", "job", "scratch")
    kube.create_configmap(ns, "artifact", "job", "artifact")

    logs = {"a": tmp_path / "a.log", "b": tmp_path / "b.log"}
    ports = {"a": free_port(), "b": free_port()}
    procs = {"a": replica(cluster, ns, logs["a"], ports["a"])}
    try:
        first = wait_for(lambda: holder(kube, ns), timeout=30, what="a leader")
        procs["b"] = replica(cluster, ns, logs["b"], ports["b"])
        wait_for(lambda: "standing by" in logs["b"].read_text(), timeout=30, what="the second replica standing by")
        old, new = procs["a"], procs["b"]
        assert holder(kube, ns) == first
        kube.cancel_job(ns, "stop", "job", gracePeriodSeconds=30, escalateAfterSeconds=5)

        def terminating() -> bool:
            st = kube.get("jobcancellations", ns, "stop").get("status") or {}
            steps = {s["name"]: s["state"] for s in st.get("steps", [])}
            pods = kube.pods(ns, "necrocode.io/role=runner")
            return steps.get("TerminateRunners") == "Running" and st["progress"].get("runnersTotal") == RUNNERS \
                and len(pods) == RUNNERS and all(p.metadata.deletion_timestamp for p in pods)

        wait_for(terminating, timeout=30, what="TerminateRunners waiting for the slow runners")

        # the leader now waits for the runners to stop: it writes nothing until one is gone
        last: dict[str, float] = {}

        def quiet() -> dict[str, float] | None:
            nonlocal last
            now = writes(scrape(ports["a"]))
            same, last = now == last, now
            return now if same else None

        before = wait_for(quiet, timeout=15, interval=0.4, what="the leader's writes to settle")
        old.send_signal(signal.SIGSTOP)
        wait_for(lambda: stopped(old.pid), timeout=5, what="the leader stopped")
        t_stopped = time.monotonic()
        assert kube.pods(ns, "necrocode.io/role=runner"), "paused too late: the runners had stopped already"

        # the standby takes over only after the lease ran out by its own clock, and finishes
        taken = wait_for(lambda: (h := holder(kube, ns)) and h != first and h, timeout=30, what="a new leader")
        assert time.monotonic() - t_stopped >= DEADLINE
        st = kube.wait_phase("jobcancellations", ns, "stop", timeout=60)["status"]
        assert old.poll() is None and stopped(old.pid)
        # nothing moves any more (the new leader is idle; the Lease renewals are not in it)
        state: dict[tuple[str, str], str] = {}

        def settled() -> dict[tuple[str, str], str] | None:
            nonlocal state
            now = snapshot(kube, ns)
            same, state = now == state, now
            return now if same else None

        settled_state = wait_for(settled, timeout=15, interval=1.0, what="the namespace to settle")

        t_cont = time.monotonic()
        old.send_signal(signal.SIGCONT)
        code = old.wait(timeout=40)
        after = snapshot(kube, ns)
        assert holder(kube, ns) == taken
        assert new.poll() is None, "the new leader must go on leading"
    finally:
        for name, p in procs.items():
            stop(p, logs[name])

    old_log = json_lines(logs["a"])
    tail = "\n".join(json.dumps(e) for e in old_log[-30:])
    # it stopped and exits non-zero (restarted as a standby by its Deployment)
    assert code == 1, tail
    lost = [e for e in old_log if e["event"] == "leadership lost; stopping"]
    assert lost and "renew deadline" in lost[0]["reason"], tail
    final = [e for e in old_log if e["event"] == "leader stopped"]
    assert final, tail
    exit_counts = final[-1]
    # no write after resuming: the writes counted at exit are those counted before the SIGSTOP,
    # the fence let none through after it, and the cluster saw no change from it
    assert {v: c for v, c in exit_counts["api_requests"].items() if v not in ("GET", "WATCH")} == before, tail
    # the fence saw every one of them (and kopf's own, e.g. its finalizer), the last before the stop
    assert exit_counts["writes_allowed"] >= sum(before.values()), tail
    assert exit_counts["last_write_monotonic"] < t_stopped < t_cont, tail
    assert after == settled_state, {k: (settled_state.get(k), v) for k, v in after.items() if settled_state.get(k) != v}
    refused = [e for e in old_log if e["event"] == "write refused: not the leader"]
    print(f"\nold leader after resuming: {exit_counts['writes_refused']} write(s) refused "
          f"({'logged' if refused else 'none attempted'}), non-GET requests {before} unchanged", file=sys.stderr)
    assert bool(refused) == (exit_counts["writes_refused"] > 0)

    # exact status, every runner gone, every lease released
    assert st["phase"] == "Completed", st
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (RUNNERS, RUNNERS, 0), p
    assert (p["tasksCancelled"], p["tasksUnaffected"]) == (RUNNERS + 1, 1), p
    assert (p["leasesReleased"], p["resourcesDeleted"], p["artifactsPreserved"]) == (RUNNERS, 1, 1), p
    assert kube.pods(ns, "necrocode.io/job=job") == []
    for i in range(RUNNERS):
        lease = kube.coord.read_namespaced_lease(f"slot-t{i}", ns)
        assert not lease.spec.holder_identity
    for t in [*(f"t{i}" for i in range(RUNNERS)), "pending"]:
        task = kube.task(ns, "job", t)["status"]
        assert task["state"] == "Cancelled" and task["cancellation"]["cancelledBy"] == "stop"
    assert kube.task(ns, "job", "done")["status"]["state"] == "Done"
    new_log = json_lines(logs["b"])
    assert any(e["event"] == "leadership acquired" for e in new_log)
