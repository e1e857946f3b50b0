"""`make demo`: the whole story on a local control plane, no cluster needed.

Starts etcd + kube-apiserver + kwok (hack/localcluster.py), installs the CRDs and the admission
policy, runs the operator, creates a NecroCode job (a dozen tasks with dependencies, four
runners of which one is slow to stop, one is on a lost node, and one is an agent that saves its
work when asked (examples/runner/cooperative_runner.py, run here as a real process watching its
pod), repo-slot leases, scratch resources and artifacts), applies a JobCancellation that gives
runners a cooperative window and keeps their logs, shows its progress live, and ends with
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
  cooperativeSeconds: 8
  preserveLogs: true
"""

# taskId -> (state, dependsOn, runner behaviour or None)
TASKS = {
    "plan": ("Done", [], None),
    "schema": ("Done", ["plan"], None),
    "api": ("Running", ["schema"], "immediate"),
    "ui": ("Running", ["schema"], "immediate"),
    "migrate": ("Running", ["schema"], "slow"),
    "docs": ("Running", ["plan"], "never"),
    "notes": ("Running", ["plan"], "cooperative"),
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
    agent: subprocess.Popen[bytes] | None = None
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

        say(f"creating job {JOB}: {len(TASKS)} tasks, 5 runners (1 slow to stop, 1 on a lost node, 1 agent that "
            "saves its work when asked), leases, scratch and artifacts")
        _create_job(kube)
        agent = _start_agent(kubeconfig)
        subprocess.run([*kubectl, "-n", NS, "get", "agenttasks,pods,leases,configmaps,pvc"], check=True)

        say("applying the JobCancellation:")
        print(CANCELLATION)
        subprocess.run([*kubectl, "apply", "-f", "-"], input=CANCELLATION, text=True, check=True)
        _follow(kube)
        _agent_done(agent)

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
        if agent is not None and agent.poll() is None:
            agent.kill()
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
            kube.create_runner(NS, JOB, tid, stop=stop, after={"slow": 4, "cooperative": 2}.get(stop), name=runner,
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


AGENT_TASK = "notes"
AGENT_LOG = CACHE / "demo-agent.log"


def _start_agent(kubeconfig: object) -> subprocess.Popen[bytes]:
    """The agent of task `notes`: the reference runner as a real process, watching its own pod
    through the API (kwok plays the pod's kubelet: the pod ends 2 s after the signal)."""
    pod = f"{JOB}-{AGENT_TASK}-runner"
    say(f"starting the agent of task {AGENT_TASK} (examples/runner/cooperative_runner.py, watching pod {pod})")
    env = {**os.environ, "POD_NAME": pod, "POD_NAMESPACE": NS, "KUBECONFIG": str(kubeconfig)}
    return subprocess.Popen([sys.executable, "examples/runner/cooperative_runner.py"], env=env,
                            stdout=AGENT_LOG.open("wb"), stderr=subprocess.STDOUT)


def _agent_done(agent: subprocess.Popen[bytes]) -> None:
    try:
        code = agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        code = agent.wait()
    last = AGENT_LOG.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    say(f"the agent of task {AGENT_TASK} exited with code {code}: {last[0]}")


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
    cooperative = [o["pod"] for o in st.get("runnerOutcomes", []) if o["outcome"] == "Cooperative"]
    print(f"  stopped by itself:  {p.get('runnersCooperative', 0)} {cooperative} "
          f"(cooperative window: {(st.get('cooperative') or {}).get('stopped', 0)} inside it)")
    logs = [f"{k['pod']} -> configmap/{k['configMap']}" if k.get("configMap") else f"{k['pod']}: {k.get('error')}"
            for k in st.get("logs", [])]
    print(f"  runner logs kept:   {p.get('logsKept', 0)} (not kept: {p.get('logsFailed', 0)}) {logs}")
    if st.get("errors"):
        print(f"  errors:             {st['errors']}")


if __name__ == "__main__":
    sys.exit(main())
