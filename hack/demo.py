"""`make demo`: the whole story on a local control plane, no cluster needed.

Starts etcd + kube-apiserver + kwok (hack/localcluster.py), installs the CRDs and the admission
policy, runs the operator, creates a NecroCode job (a dozen tasks with dependencies, four
runners of which one is slow to stop and one is on a lost node, repo-slot leases, scratch
resources and artifacts), applies a JobCancellation, shows its progress live, and ends with
`kubectl get jobcancellations` and a summary. Everything it started is stopped at the end
(`--keep` leaves the control plane and the operator running to look around).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from hack.localcluster import CACHE, LocalCluster, bin_dir

NS = "demo"
JOB = "refactor-auth"
CANCELLATION = f"""apiVersion: necrocode.io/v1alpha1
kind: JobCancellation
metadata:
  name: stop-{JOB}
  namespace: {NS}
spec:
  jobName: {JOB}
  reason: "requirements changed: auth moves to the gateway"
  requestedBy: demo-user
  gracePeriodSeconds: 6
  escalateAfterSeconds: 2
  preserveArtifacts: true
"""

# taskId -> (state, dependsOn, runner behaviour or None)
TASKS = {
    "plan": ("Done", [], None),
    "schema": ("Done", ["plan"], None),
    "api": ("Running", ["schema"], "immediate"),
    "ui": ("Running", ["schema"], "immediate"),
    "migrate": ("Running", ["schema"], "slow"),
    "docs": ("Running", ["plan"], "never"),
    "tests-api": ("Ready", ["api"], None),
    "tests-ui": ("Pending", ["ui"], None),
    "e2e": ("Pending", ["tests-api", "tests-ui"], None),
    "review": ("Blocked", ["e2e"], None),
    "release": ("Pending", ["review", "migrate"], None),
    "lint": ("Failed", ["plan"], None),
}


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the control plane and operator running")
    a = ap.parse_args()
    bins = bin_dir()
    cluster = LocalCluster(dir=CACHE / "demo-cluster", nodes=3, tie_to_parent=not a.keep, bins=bins)
    say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
    t0 = time.monotonic()
    kubeconfig = cluster.up()
    say(f"control plane ready in {time.monotonic() - t0:.1f}s; KUBECONFIG={kubeconfig}")
    kubectl = [str(bins / "kubectl"), f"--kubeconfig={kubeconfig}"]
    operator = None
    try:
        from tests.support.kube import Kubectl

        kube = Kubectl(kubeconfig)
        say("installing the CRDs (crds/) and the admission policies (deploy/: blocked dispatch, requester)")
        kube.install_crds()
        subprocess.run([*kubectl, "get", "nodes"], check=True)
        kube.delete_namespace(NS)
        _wait_ns_gone(kube)
        kube.create_namespace(NS)

        say("starting the operator (logs: " + str(CACHE / "demo-operator.log") + ")")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "NECROCODE_METRICS_PORT": "0",
               "NECROCODE_STATUS_WRITE_INTERVAL": "0.3", "NECROCODE_REQUESTER_POLICY": "true"}
        operator = subprocess.Popen(
            [sys.executable, "-m", "necrocode.main", "--log-format", "json", "--liveness", "",
             "--namespace", NS], env=env, stdout=(CACHE / "demo-operator.log").open("w"), stderr=subprocess.STDOUT)

        say(f"creating job {JOB}: {len(TASKS)} tasks, 4 runners (1 slow to stop, 1 on a lost node), "
            "leases, scratch and artifacts")
        _create_job(kube)
        subprocess.run([*kubectl, "-n", NS, "get", "agenttasks,pods,leases,configmaps,pvc"], check=True)

        say("applying the JobCancellation:")
        print(CANCELLATION)
        subprocess.run([*kubectl, "apply", "-f", "-"], input=CANCELLATION, text=True, check=True)
        _follow(kube)

        say("kubectl get jobcancellations")
        subprocess.run([*kubectl, "-n", NS, "get", "jobcancellations", "-o", "wide"], check=True)
        _summary(kube)
        subprocess.run([*kubectl, "-n", NS, "get", "agenttasks,pods,leases,configmaps,pvc"], check=True)
        if a.keep:
            say(f"left running: export KUBECONFIG={kubeconfig}; stop with "
                f"`python hack/localcluster.py down --dir {cluster.dir}` and kill {operator.pid}")
            operator = None
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        if not a.keep:
            say("stopping the control plane")
            cluster.down()


def _wait_ns_gone(kube: object) -> None:
    from kubernetes.client.rest import ApiException

    from tests.support.kube import Kubectl, wait_for

    assert isinstance(kube, Kubectl)

    def gone() -> bool:
        try:
            kube.core.read_namespace(NS)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=60, what="old demo namespace gone")


def _create_job(kube: object) -> None:
    from tests.support.kube import Kubectl, wait_for

    assert isinstance(kube, Kubectl)
    kube.create_job(NS, JOB)
    for i, (tid, (state, deps, stop)) in enumerate(TASKS.items()):
        runner = None
        if stop:
            runner = f"{JOB}-{tid}-runner"
            kube.create_runner(NS, JOB, tid, stop=stop, after=4 if stop == "slow" else None, name=runner,
                               node=f"kwok-node-{i % 3}")
            kube.create_lease(NS, f"slot-{i:02d}", pool="repos-main", job=JOB, task_id=tid, holder=runner)
        kube.create_task(NS, JOB, tid, state, depends_on=deps, runner=runner,
                         slot=f"slot-{i:02d}" if runner else None)
    kube.create_lease(NS, "slot-99", pool="repos-main")
    kube.create_configmap(NS, f"{JOB}-scratch-env", JOB, "scratch")
    kube.create_pvc(NS, f"{JOB}-workspace", JOB, "scratch")
    kube.create_configmap(NS, f"{JOB}-diffs", JOB, "artifact")
    kube.create_pvc(NS, f"{JOB}-test-results", JOB, "artifact")
    wait_for(lambda: all(p.status.phase == "Running" for p in kube.pods(NS, "necrocode.io/role=runner")),
             what="runners Running")


def _follow(kube: object) -> None:
    from tests.support.kube import Kubectl

    assert isinstance(kube, Kubectl)
    say("following the cancellation's status (written live by the operator)")
    last = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = kube.get("jobcancellations", NS, f"stop-{JOB}").get("status") or {}
        p = st.get("progress") or {}
        running = next((s["name"] for s in st.get("steps", []) if s["state"] == "Running"), "-")
        line = (f"phase={st.get('phase', 'Pending'):<10} step={running:<17} runners={st.get('runnerSummary') or '-':<15} "
                f"tasks cancelled={p.get('tasksCancelled', 0):<3} leases released={p.get('leasesReleased', 0):<3} "
                f"deleted={p.get('resourcesDeleted', 0)} kept={p.get('artifactsPreserved', 0)}")
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')}  {line}", flush=True)
            last = line
        if st.get("phase") in ("Completed", "PartiallyCompleted", "Failed", "Rejected"):
            print()
            for s in st["steps"]:
                print(f"  {s['name']:<17} {s['state']:<10} {s.get('message', '')}")
            print()
            return
        time.sleep(0.3)
    raise SystemExit("the cancellation did not finish within 120 s; see the operator log")


def _summary(kube: object) -> None:
    from tests.support.kube import Kubectl

    assert isinstance(kube, Kubectl)
    st = kube.get("jobcancellations", NS, f"stop-{JOB}")["status"]
    p = st["progress"]
    forced = [o["pod"] for o in st.get("runnerOutcomes", []) if o["outcome"] == "Forced"]
    say("summary")
    print(f"  phase:              {st['phase']} ({st.get('message', '')})")
    print(f"  runners stopped:    {p['runnersTerminated']}/{p['runnersTotal']}, forced: {p['runnersForced']} "
          f"{forced if forced else ''}")
    print(f"  tasks cancelled:    {p['tasksCancelled']} (left as they were: {p['tasksUnaffected']})")
    print(f"  leases released:    {p['leasesReleased']} {st.get('cleanup', {}).get('released', [])}")
    print(f"  resources deleted:  {p['resourcesDeleted']} {st.get('cleanup', {}).get('deleted', [])}")
    print(f"  artifacts kept:     {p['artifactsPreserved']} {st.get('cleanup', {}).get('preserved', [])}")
    if st.get("errors"):
        print(f"  errors:             {st['errors']}")


if __name__ == "__main__":
    sys.exit(main())
