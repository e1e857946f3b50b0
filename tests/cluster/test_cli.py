"""The `necrocode` CLI against the real control plane with the operator running: it creates the
same resources as `kubectl apply`, follows them, lists them, and fails with one clear line."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.shell_completion import ShellComplete
from click.testing import CliRunner, Result
from kubernetes.client.rest import ApiException

from necrocode import cli as necrocode_cli
from necrocode.cli import connection, kubeconfig, live, options, views
from tests.support.kube import ClusterInfo, Kubectl, wait_for
from tests.support.terminal import sigint_as_from_a_terminal

pytestmark = pytest.mark.usefixtures("operator")

G, V = "necrocode.io", "v1alpha1"
RUNNER = "necrocode.io/role=runner"
NAME = re.compile(r"^[a-z0-9][-a-z0-9.]*-cancel-\d{14}-[0-9a-f]{4}$")


def run(cluster: ClusterInfo, *args: str, kubeconfig: Path | None = None) -> Result:
    result = CliRunner().invoke(necrocode_cli.cli, [*args, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)])
    assert "Traceback" not in result.output, result.output
    return result


def cancellations(kube: Kubectl, ns: str) -> list[dict[str, Any]]:
    return [o for p in ("jobcancellations", "taskcancellations")
            for o in kube.custom.list_namespaced_custom_object(G, V, ns, p)["items"]]


def only_cancellation(kube: Kubectl, ns: str) -> dict[str, Any]:
    [obj] = cancellations(kube, ns)
    return obj


def small_job(kube: Kubectl, ns: str, job: str = "job1", stop: str = "immediate", grace: int = 30) -> None:
    """Two running tasks (runners, slots), one pending, one done; scratch and an artifact."""
    kube.create_job(ns, job)
    for tid in ("a", "b"):
        pod = f"{job}-{tid}-runner"
        kube.create_runner(ns, job, tid, stop=stop, name=pod, grace=grace)
        kube.create_lease(ns, f"{job}-slot-{tid}", job=job, task_id=tid, holder=pod)
        kube.create_task(ns, job, tid, "Running", runner=pod, slot=f"{job}-slot-{tid}")
    kube.create_task(ns, job, "c", "Pending", depends_on=["a"])
    kube.create_task(ns, job, "d", "Done")
    kube.create_configmap(ns, f"{job}-scratch", job, "scratch")
    kube.create_configmap(ns, f"{job}-diff", job, "artifact")
    wait_for(lambda: all(p.status.phase == "Running" for p in kube.pods(ns, f"necrocode.io/job={job}")),
             what="runners Running")


def me(kube: Kubectl) -> str:
    review = kube.authn.create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                    "kind": "SelfSubjectReview"})
    return str(review.status.user_info.username)


# ----------------------------------------------------------------------------- job cancel
def test_cancel_waits_with_plain_progress_and_a_summary(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    small_job(kube, ns)
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--reason", "budget exceeded", "--grace-period", "5")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "\x1b[" not in out  # not a terminal: no animation
    obj = only_cancellation(kube, ns)
    name = obj["metadata"]["name"]
    assert NAME.match(name) and name.startswith("job1-cancel-")
    lines = out.splitlines()
    assert lines[0] == f"jobcancellation.necrocode.io/{name} created"
    # one plain line per change, then the summary (a fast cancellation may finish between two
    # polls, so "phase Running" is not guaranteed to be seen)
    assert all(re.match(r"^\[\s*[\d.]+s\] ", ln) for ln in lines[1:lines.index(next(
        ln for ln in lines if "phase Completed" in ln)) + 1]), out
    for fragment in ("step Validate: Succeeded", "step TerminateRunners: Succeeded", "runners terminated 2/2",
                     "tasks cancelled 3", "leases released 2", "resources cleaned 1 deleted, 1 kept",
                     "phase Completed"):
        assert any(fragment in ln for ln in lines), (fragment, out)
    assert len([ln for ln in lines if "runners terminated 2/2" in ln]) == 1  # a line per change, not per poll
    summary = out[out.index(f"jobcancellation/{name} in namespace {ns}: Completed"):]
    assert "affected tasks (3):" in summary
    assert re.search(r"\n\s+a\s+Running\s+Cancelled\s+job1-a-runner\s+budget exceeded", summary), summary
    assert re.search(r"\n\s+c\s+Pending\s+Cancelled\s+-", summary)
    assert "runners terminated: 2/2" in summary
    assert "released  lease/job1-slot-a, lease/job1-slot-b" in summary
    assert "deleted   configmap/job1-scratch" in summary and "kept      configmap/job1-diff" in summary

    # the resource: what kubectl apply would have created, plus labels and requestedBy
    assert obj["spec"]["jobName"] == "job1" and obj["spec"]["reason"] == "budget exceeded"
    assert obj["spec"]["gracePeriodSeconds"] == 5 and obj["spec"]["force"] is False
    assert obj["spec"]["requestedBy"] == me(kube)
    assert obj["metadata"]["labels"] == {"necrocode.io/job": "job1"}
    assert obj["status"]["phase"] == "Completed"
    assert kube.task(ns, "job1", "c")["status"]["state"] == "Cancelled"


def test_no_wait_json_is_the_created_resource_and_cancel_status_follows_it(kube: Kubectl, cluster: ClusterInfo,
                                                                          namespace: str) -> None:
    ns = namespace
    small_job(kube, ns, stop="slow")
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--no-wait", "-o", "json", "--reason", "r1")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout holds only the document
    assert f"jobcancellation.necrocode.io/{doc['metadata']['name']} created" in res.stderr
    stored = kube.get("jobcancellations", ns, doc["metadata"]["name"])
    assert doc["kind"] == "JobCancellation" and doc["apiVersion"] == f"{G}/{V}"
    assert doc["metadata"]["uid"] == stored["metadata"]["uid"]
    assert doc["spec"] == stored["spec"]
    assert doc["metadata"]["labels"] == {"necrocode.io/job": "job1"}

    # --watch follows it to the end, a line per change, and exits with the phase's code
    res = run(cluster, "job", "cancel-status", "job1", "-n", ns, "--watch")
    assert res.exit_code == 0, res.output
    assert "phase Completed" in res.stdout and "\x1b[" not in res.stdout
    assert "steps:      8/8 done" in res.stdout

    # cancel-status: every step with state, duration and message
    res = run(cluster, "job", "cancel-status", "job1", "-n", ns)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.startswith(f"jobcancellation/{doc['metadata']['name']}  (namespace {ns})")
    assert "phase:      Completed" in out and "reason:     r1" in out
    steps = re.findall(r"^\s{4}(\w+)\s+(Succeeded|Failed|Skipped|Running|Pending)\s+(\S+)", out, re.M)
    assert [s[0] for s in steps] == ["Validate", "BlockDispatch", "ClassifyTasks", "SignalRunners",
                                     "TerminateRunners", "UpdateTaskStates", "CleanupResources", "Verify"]
    assert all(s[1] == "Succeeded" and re.match(r"^\d", s[2]) for s in steps), steps

    # -o yaml: the list of the shown cancellations, as stored
    res = run(cluster, "job", "cancel-status", "job1", "-n", ns, "-o", "yaml")
    listed = yaml.safe_load(res.stdout)
    assert listed["kind"] == "List"
    assert [i["metadata"]["name"] for i in listed["items"]] == [doc["metadata"]["name"]]
    assert listed["items"][0]["status"] == kube.get("jobcancellations", ns, doc["metadata"]["name"])["status"]


def test_force_with_json_output_matches_the_stored_resource(kube: Kubectl, cluster: ClusterInfo,
                                                             namespace: str) -> None:
    ns = namespace
    small_job(kube, ns, stop="never")
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--force", "-o", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    stored = kube.get("jobcancellations", ns, doc["metadata"]["name"])
    assert doc["spec"]["force"] is True
    assert doc["status"] == stored["status"]
    assert doc["status"]["phase"] == "Completed"
    p = doc["status"]["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (2, 2, 2)
    assert "phase Completed" in res.stderr  # progress went to stderr, plain
    assert kube.pods(ns, "necrocode.io/job=job1") == []


def test_force_on_a_job_whose_graceful_cancellation_runs_escalates_it(kube: Kubectl, cluster: ClusterInfo,
                                                                      namespace: str) -> None:
    """`cancel --force` while a graceful cancellation of the job runs sets that one's spec.force
    (no second record): its runners, which would take their 300 s, are forced at once, and the
    user is recorded as who escalated it."""
    ns = namespace
    small_job(kube, ns, stop="never", grace=300)
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--grace-period", "300", "--no-wait", "-o", "json")
    assert res.exit_code == 0, res.output
    name = json.loads(res.stdout)["metadata"]["name"]
    wait_for(lambda: (kube.get("jobcancellations", ns, name).get("status") or {}).get("runnerSummary") == "0/2"
             and all(p.metadata.deletion_timestamp for p in kube.pods(ns, RUNNER)), what="both runners terminating")

    started = time.monotonic()
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--force")
    assert res.exit_code == 0, res.output
    assert time.monotonic() - started < 60
    assert res.stdout.splitlines()[0] == (f"jobcancellation.necrocode.io/{name} escalated to force "
                                          "(it was running gracefully; spec.force set to true)"), res.stdout
    assert f"jobcancellation/{name} in namespace {ns}: Completed" in res.stdout
    assert [o["metadata"]["name"] for o in cancellations(kube, ns)] == [name]  # escalated, not asked again
    obj = kube.get("jobcancellations", ns, name)
    st = obj["status"]
    assert obj["spec"]["force"] is True and obj["spec"]["gracePeriodSeconds"] == 300
    assert obj["metadata"]["annotations"]["necrocode.io/force-requester"] == me(kube) == st["escalatedByUser"]
    p = st["progress"]
    assert (p["runnersTotal"], p["runnersTerminated"], p["runnersForced"]) == (2, 2, 2), p
    assert kube.pods(ns, RUNNER) == []
    # once it has ended there is nothing to escalate: a later --force asks anew (and is its duplicate)
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--force")
    assert res.exit_code == 0 and res.stdout.splitlines()[0].endswith(" created"), res.output
    assert f"duplicate of jobcancellation/{name}" in res.stdout
    assert len(cancellations(kube, ns)) == 2


def test_task_cancellation_with_and_without_cascade(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    for job in ("ja", "jb"):
        kube.create_job(ns, job)
        kube.create_runner(ns, job, "a", name=f"{job}-a-runner")
        kube.create_task(ns, job, "a", "Running", runner=f"{job}-a-runner")
        kube.create_task(ns, job, "b", "Pending", depends_on=["a"])
        kube.create_task(ns, job, "x", "Running")

    res = run(cluster, "job", "cancel", "ja", "--task", "a", "-n", ns, "-o", "yaml")
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.stdout)
    assert doc["kind"] == "TaskCancellation"
    assert doc["metadata"]["name"].startswith("ja-a-cancel-") and NAME.match(doc["metadata"]["name"])
    assert doc["metadata"]["labels"] == {"necrocode.io/job": "ja", "necrocode.io/task": "a"}
    assert (doc["spec"]["taskId"], doc["spec"]["cascade"]) == ("a", True)
    assert doc["status"] == kube.get("taskcancellations", ns, doc["metadata"]["name"])["status"]
    assert {t["taskId"]: t["after"] for t in doc["status"]["affectedTasks"]} == {"a": "Cancelled", "b": "Cancelled"}

    res = run(cluster, "job", "cancel", "jb", "--task", "a", "--no-cascade", "-n", ns)
    assert res.exit_code == 0, res.output
    assert "taskcancellation.necrocode.io/jb-a-cancel-" in res.stdout
    [tc] = [o for o in cancellations(kube, ns) if o["spec"]["jobName"] == "jb"]
    assert tc["spec"]["cascade"] is False
    assert kube.task(ns, "jb", "a")["status"]["state"] == "Cancelled"
    assert kube.task(ns, "jb", "b")["status"]["state"] == "Blocked"
    assert kube.task(ns, "jb", "x")["status"]["state"] == "Running"

    # a missing task: nothing is created
    res = run(cluster, "job", "cancel", "jb", "--task", "nope", "-n", ns)
    assert res.exit_code == 7
    assert res.stderr == f"error: task nope of job jb not found in namespace {ns}\n"
    assert len(cancellations(kube, ns)) == 2


def test_dry_run_shows_the_plan_and_changes_nothing(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    small_job(kube, ns)
    res = run(cluster, "job", "cancel", "job1", "--dry-run", "-n", ns)
    assert res.exit_code == 0, res.output
    assert "(dry run)" in res.stdout.splitlines()[0]
    assert "dry run: nothing was changed; it would act on" in res.stdout
    assert re.search(r"runner pods\s+job1-a-runner, job1-b-runner", res.stdout), res.stdout
    assert re.search(r"delete\s+configmap/job1-scratch", res.stdout) and re.search(r"keep\s+configmap/job1-diff",
                                                                                   res.stdout)
    assert only_cancellation(kube, ns)["spec"]["dryRun"] is True
    assert kube.task(ns, "job1", "a")["status"]["state"] == "Running"
    assert len(kube.pods(ns, RUNNER)) == 2


def test_drain_cooperative_and_keep_logs_go_into_the_spec_of_jobs_and_tasks(kube: Kubectl, cluster: ClusterInfo,
                                                                            namespace: str) -> None:
    """Issue 18's flags create exactly the spec fields the operator reads, for a job and for a
    task; the views say which mode was asked, and a dry run lists what the drain would do."""
    ns = namespace
    small_job(kube, ns)
    res = run(cluster, "job", "cancel", "job1", "--drain", "30s", "--cooperative", "5s", "--keep-logs", "--dry-run",
              "-n", ns)
    assert res.exit_code == 0, res.output
    obj = only_cancellation(kube, ns)
    spec = obj["spec"]
    assert (spec["mode"], spec["drainDeadlineSeconds"], spec["cooperativeSeconds"], spec["preserveLogs"],
            spec["dryRun"]) == ("Drain", 30, 5, True, True), spec
    assert "  mode: Drain, running tasks may finish for up to 30s, cooperative stop up to 5s, logs kept" in res.stdout
    assert re.search(r"dry run: nothing was changed; it would act on\n(  .*\n)*  let finish +\S", res.stdout), res.stdout
    status = run(cluster, "job", "cancel-status", "job1", "-n", ns)
    assert "  mode:       Drain, running tasks may finish for up to 30s" in status.stdout, status.stdout

    res = run(cluster, "job", "cancel", "job1", "--task", "c", "--drain", "2m", "--no-keep-logs", "--dry-run",
              "--no-wait", "-o", "json", "-n", ns)
    assert res.exit_code == 0, res.output
    created = json.loads(res.stdout)
    stored = kube.get("taskcancellations", ns, created["metadata"]["name"])
    assert stored["spec"] == created["spec"]
    assert (stored["spec"]["mode"], stored["spec"]["drainDeadlineSeconds"], stored["spec"]["preserveLogs"],
            stored["spec"]["taskId"]) == ("Drain", 120, False, "c")
    assert stored["spec"]["cooperativeSeconds"] == 0  # not given: the CRD's default
    assert kube.task(ns, "job1", "c")["status"]["state"] == "Pending"  # dry runs: nothing changed


def test_rejected_cancellation_exits_5(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    kube.create_job(namespace, "old", phase="Succeeded")
    res = run(cluster, "job", "cancel", "old", "-n", namespace)
    assert res.exit_code == 5, res.output
    assert re.search(r"in namespace \S+: Rejected", res.stdout)
    assert "already Succeeded" in res.stdout


# ----------------------------------------------------------------------------- cancel-status on hand-written status
def hand_made(kube: Kubectl, ns: str, name: str, job: str, phase: str | None, **status: Any) -> None:
    """A cancellation in a namespace no operator serves, with a status written by the test."""
    kube.custom.create_namespaced_custom_object(G, V, ns, "jobcancellations", {
        "apiVersion": f"{G}/{V}", "kind": "JobCancellation",
        "metadata": {"name": name, "labels": {"necrocode.io/job": job}}, "spec": {"jobName": job}})
    if phase:
        kube.patch_status("jobcancellations", ns, name, {"phase": phase, **status})


STEPS_RUNNING = [
    {"name": "Validate", "state": "Succeeded", "startedAt": "2026-11-25T10:00:00Z", "finishedAt": "2026-11-25T10:00:01Z"},
    {"name": "CleanupResources", "state": "Running", "startedAt": "2026-11-25T10:00:01Z",
     "message": "retrying configmap/j-stuck"},
    {"name": "Verify", "state": "Pending"},
]
ERRORS = [{"step": "CleanupResources", "object": "configmap/j-stuck", "message": "pinned by policy", "attempts": 3}]


def test_cancel_status_shows_steps_errors_and_watch_exit_codes(cluster: ClusterInfo, kube: Kubectl,
                                                                solo_namespace: str) -> None:
    ns = solo_namespace
    hand_made(kube, ns, "j-old", "j", "Completed", startedAt="2026-11-25T09:00:00Z")
    time.sleep(1.1)  # a later creationTimestamp
    hand_made(kube, ns, "j-new", "j", "Running", steps=STEPS_RUNNING, errors=ERRORS,
              startedAt="2026-11-25T10:00:00Z", progress={"runnersTotal": 2, "runnersTerminated": 1,
                                                          "runnersForced": 1})
    res = run(cluster, "job", "cancel-status", "j", "-n", ns)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "jobcancellation/j-new" in out and "j-old" not in out  # the latest only
    assert "phase:      Running" in out
    assert "steps:      1/3 done; pending: CleanupResources, Verify" in out
    assert re.search(r"Validate\s+Succeeded\s+1s", out)
    assert re.search(r"CleanupResources\s+Running\s+\S+\s+retrying configmap/j-stuck", out)
    assert re.search(r"Verify\s+Pending\s+-", out)
    assert "runners 1/2 (1 forced)" in out
    assert re.search(r"CleanupResources\s+configmap/j-stuck\s+3\s+pinned by policy", out)

    # --watch: a line per change, then the final view; PartiallyCompleted exits 3
    def finish(phase: str) -> None:
        time.sleep(1.5)
        steps = [{**s, "state": "Succeeded" if s["name"] != "CleanupResources" else "Failed",
                  "finishedAt": "2026-11-25T10:00:05Z", "startedAt": "2026-11-25T10:00:01Z"} for s in STEPS_RUNNING]
        kube.patch_status("jobcancellations", ns, "j-new", {"phase": phase, "steps": steps,
                                                            "completedAt": "2026-11-25T10:00:05Z"})

    worker = threading.Thread(target=finish, args=("PartiallyCompleted",))
    worker.start()
    res = run(cluster, "job", "cancel-status", "j", "-n", ns, "--watch")
    worker.join()
    assert res.exit_code == 3, res.output
    assert re.search(r"^\[\s*[\d.]+s\] phase Running$", res.stdout, re.M)
    assert re.search(r"^\[\s*[\d.]+s\] step CleanupResources: Failed \(4s\) - retrying", res.stdout, re.M)
    assert "phase:      PartiallyCompleted" in res.stdout

    # Failed exits 4; with -o json the final list is the document
    hand_made(kube, ns, "k-1", "k", "Running")
    worker = threading.Thread(target=lambda: (time.sleep(1.0), kube.patch_status(
        "jobcancellations", ns, "k-1", {"phase": "Failed", "message": "could not block dispatch"})))
    worker.start()
    res = run(cluster, "job", "cancel-status", "k", "-n", ns, "--watch", "-o", "json")
    worker.join()
    assert res.exit_code == 4, res.output
    assert json.loads(res.stdout)["items"][0]["status"]["message"] == "could not block dispatch"

    # a job with no cancellation
    res = run(cluster, "job", "cancel-status", "nothing", "-n", ns)
    assert (res.exit_code, res.stderr) == (7, f"error: no cancellations found for job nothing in namespace {ns}\n")

    # --phase filters the list (client side)
    res = run(cluster, "job", "cancellations", "-n", ns, "--phase", "Completed", "-o", "json")
    assert [i["metadata"]["name"] for i in json.loads(res.stdout)["items"]] == ["j-old"]


# ----------------------------------------------------------------------------- cancellations
def test_cancellations_pages_120_records_newest_first(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    names = [f"rec-{i:03d}" for i in range(120)]
    for i, name in enumerate(names):  # name order is creation order
        kube.custom.create_namespaced_custom_object(G, V, ns, "jobcancellations", {
            "apiVersion": f"{G}/{V}", "kind": "JobCancellation",
            "metadata": {"name": name, "labels": {"necrocode.io/job": f"cli-ghost-{i:03d}"}},
            "spec": {"jobName": f"cli-ghost-{i:03d}", "reason": f"reason {i}"}})
    kube.custom.create_namespaced_custom_object(G, V, ns, "taskcancellations", {
        "apiVersion": f"{G}/{V}", "kind": "TaskCancellation",
        "metadata": {"name": "task-rec", "labels": {"necrocode.io/job": "cli-ghost-000", "necrocode.io/task": "t1"}},
        "spec": {"jobName": "cli-ghost-000", "taskId": "t1"}})

    pages: list[list[dict[str, Any]]] = []
    token: str | None = None
    while True:
        args = ["job", "cancellations", "-n", ns, "--limit", "50", "-o", "json"] + (["--continue", token] if token else [])
        res = run(cluster, *args)
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        pages.append(doc["items"])
        token = doc["metadata"].get("continue")
        if not token:
            break
    assert [len(p) for p in pages] == [50, 50, 21]
    seen = [i["metadata"]["name"] for p in pages for i in p]
    assert sorted(seen) == sorted([*names, "task-rec"]) and len(set(seen)) == 121  # all, exactly once
    for page in pages:  # newest first within each page
        stamps = [i["metadata"]["creationTimestamp"] for i in page]
        assert stamps == sorted(stamps, reverse=True)
    assert seen[:50] == names[49::-1]
    assert pages[2][0]["kind"] == "TaskCancellation"  # the newest of the last page

    # the table: same paging, a "more:" hint on stderr with the next token
    res = run(cluster, "job", "cancellations", "-n", ns, "--limit", "50")
    rows = res.stdout.splitlines()
    assert rows[0].split() == ["NAME", "KIND", "JOB", "TASK", "REQUESTER", "PHASE", "RUNNERS", "STARTED", "DURATION",
                               "REASON"]
    assert len(rows) == 51 and rows[1].split()[:3] == ["rec-049", "JobCancellation", "cli-ghost-049"]
    admin = kube.get("jobcancellations", ns, "rec-049")["metadata"]["annotations"]["necrocode.io/requester"]
    assert rows[1].split()[4] == admin  # recorded by the API server (the test's admin client created it)
    assert re.match(r"more: necrocode job cancellations --limit 50 --continue \S+$", res.stderr.strip())

    # without --limit: every page, globally newest first
    res = run(cluster, "job", "cancellations", "-n", ns, "-o", "json")
    everything = [i["metadata"]["name"] for i in json.loads(res.stdout)["items"]]
    assert len(everything) == 121 and everything[0] == "task-rec" and everything[1:] == names[::-1]

    # --job (label selector), -A (a NAMESPACE column)
    res = run(cluster, "job", "cancellations", "-A", "--job", "cli-ghost-007")
    assert res.exit_code == 0, res.output
    rows = res.stdout.splitlines()
    assert rows[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [ns, "rec-007", "JobCancellation", "cli-ghost-007"] in [r.split()[:4] for r in rows[1:]]

    # the operator rejects them all (the jobs do not exist): --phase Rejected
    wait_for(lambda: all((o.get("status") or {}).get("phase") == "Rejected" for o in cancellations(kube, ns)),
             timeout=60, what="all rejected")
    res = run(cluster, "job", "cancellations", "-n", ns, "--job", "cli-ghost-000", "-o", "json")
    assert sorted(i["metadata"]["name"] for i in json.loads(res.stdout)["items"]) == ["rec-000", "task-rec"]
    res = run(cluster, "job", "cancellations", "-n", ns, "--phase", "Rejected", "--job", "cli-ghost-001")
    assert [r.split()[0] for r in res.stdout.splitlines()[1:]] == ["rec-001"]
    assert "Rejected" in res.stdout

    res = run(cluster, "job", "cancellations", "-n", ns, "--limit", "5", "--continue", "garbage")
    assert res.exit_code == 2 and res.stderr.startswith("error: Invalid value for --continue")


# ----------------------------------------------------------------------------- errors
def test_usage_errors_are_one_line(cluster: ClusterInfo, namespace: str) -> None:
    for args, fragment in (
        (["job", "cancel", "j", "--no-cascade"], "--no-cascade needs --task"),
        (["job", "cancel", "j", "--no-wait", "--timeout", "3"], "--timeout needs --wait"),
        (["job", "cancel", "j", "--grace-period", "-1"], "--grace-period"),
        (["job", "cancel", "j", "-o", "xml"], "'xml' is not one of"),
        (["job", "cancellations", "--continue", "x"], "--continue needs --limit"),
        (["job", "cancel", "j", "--drain", "25h"], "'25h' is out of range: from 1s to 24h"),
        (["job", "cancel", "j", "--drain", "1m", "--force"], "--drain lets running tasks finish and --force stops"),
    ):
        res = run(cluster, *args, "-n", namespace)
        assert res.exit_code == 2, (args, res.output)
        assert res.stdout == ""
        [line] = res.stderr.splitlines()
        assert line.startswith("error: ") and fragment in line, line


def test_missing_job_is_reported_before_creating_anything(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    res = run(cluster, "job", "cancel", "ghost", "-n", namespace)
    assert (res.exit_code, res.stderr) == (7, f"error: job ghost not found in namespace {namespace}\n")
    assert cancellations(kube, namespace) == []


def test_missing_crds_map_to_a_clear_error() -> None:
    # the shared cluster keeps its CRDs; the mapping of the resource-list call's 404 is checked here
    err = connection.map_api_error(ApiException(status=404, reason="Not Found"),
                                      connection.ApiCall("list", "jobcancellations.necrocode.io", "ns1"))
    assert err.exit_code == 7
    assert err.message == "the necrocode.io CRDs are not installed in this cluster (kubectl apply -f crds/)"
    # a missing object (a Status naming it) is not mistaken for missing CRDs
    body = json.dumps({"kind": "Status", "reason": "NotFound", "details": {"name": "x", "kind": "agentjobs"}})
    missing = ApiException(status=404, reason="Not Found")
    missing.body = body
    err = connection.map_api_error(missing, connection.ApiCall("get", "agentjobs.necrocode.io", "ns1", "x"))
    assert (err.exit_code, err.message) == (7, "agentjob x not found in namespace ns1")


def kubeconfig_for(cluster: ClusterInfo, path: Path, *, server: str | None = None, token: str | None = None) -> Path:
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx = next(c for c in cfg["contexts"] if c["name"] == cfg["current-context"])["context"]
    clus = next(c for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    if server:
        clus["cluster"]["server"] = server
    if token:
        for u in cfg["users"]:
            if u["name"] == ctx["user"]:
                u["user"] = {"token": token}
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def grant(kube: Kubectl, ns: str, sa: str, rules: list[dict[str, Any]]) -> str:
    """A ServiceAccount `sa` bound to a Role of `rules` in `ns`; its username."""
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})
    kube.rbac.create_namespaced_role(ns, {"metadata": {"name": sa}, "rules": rules})
    kube.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": sa}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]})
    return f"system:serviceaccount:{ns}:{sa}"


def test_forbidden_names_the_verb_and_resource(kube: Kubectl, cluster: ClusterInfo, namespace: str,
                                               tmp_path: Path) -> None:
    ns = namespace
    kube.create_job(ns, "job1")
    grant(kube, ns, "reader", [{"apiGroups": [G], "verbs": ["get", "list"], "resources": [
        "agentjobs", "agenttasks", "jobcancellations", "taskcancellations"]}])
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
    configs = {}
    for sa in ("reader", "nobody"):
        tr = kube.core.create_namespaced_service_account_token(sa, ns, {"spec": {"expirationSeconds": 600}})
        configs[sa] = kubeconfig_for(cluster, tmp_path / f"{sa}.yaml", token=tr.status.token)

    def allowed() -> bool:
        return run(cluster, "job", "cancellations", "-n", ns, kubeconfig=configs["reader"]).exit_code == 0

    wait_for(allowed, timeout=15, what="the role to take effect")
    res = run(cluster, "job", "cancel", "job1", "-n", ns, kubeconfig=configs["reader"])
    assert res.exit_code == 8, res.output
    assert res.stderr == (f'error: forbidden: user "system:serviceaccount:{ns}:reader" cannot create '
                          f"jobcancellations.necrocode.io in namespace {ns}\n")
    res = run(cluster, "job", "cancellations", "-A", kubeconfig=configs["nobody"])
    assert res.exit_code == 8
    assert res.stderr == (f'error: forbidden: user "system:serviceaccount:{ns}:nobody" cannot list '
                          "jobcancellations.necrocode.io across all namespaces\n")
    assert cancellations(kube, ns) == []


def test_unreachable_cluster_in_a_subprocess(cluster: ClusterInfo, tmp_path: Path) -> None:
    bad = kubeconfig_for(cluster, tmp_path / "bad.yaml", server="https://127.0.0.1:1")
    for args in (["job", "cancel", "job1"], ["job", "cancellations", "-A"], ["job", "cancel-status", "job1"]):
        proc = subprocess.run([sys.executable, "-m", "necrocode.cli", *args, "--kubeconfig", str(bad)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 9, proc.stderr
        assert proc.stderr == "error: cannot reach the cluster at https://127.0.0.1:1: connection refused\n"
        assert proc.stdout == ""
    proc = subprocess.run([sys.executable, "-m", "necrocode.cli", "job", "cancellations",
                           "--kubeconfig", str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no usable kubeconfig:") and len(proc.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------- waiting: timeout, Ctrl-C
def test_timeout_exits_6_and_the_cancellation_goes_on(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    small_job(kube, ns, stop="never", grace=60)
    started = time.monotonic()
    res = run(cluster, "job", "cancel", "job1", "-n", ns, "--grace-period", "60", "--timeout", "2")
    assert res.exit_code == 6, res.output
    assert time.monotonic() - started < 10
    name = only_cancellation(kube, ns)["metadata"]["name"]
    assert res.stderr.startswith(f"error: timed out after 2s waiting for jobcancellation/{name} (phase ")
    assert f"follow it with: necrocode job cancel-status job1 -n {ns} --watch" in res.stderr
    time.sleep(1)
    assert kube.get("jobcancellations", ns, name)["status"]["phase"] == "Running"
    finish_lost_runners(kube, ns, name)


def finish_lost_runners(kube: Kubectl, ns: str, name: str) -> None:
    """Force the lost runners away so the cancellation ends (and the namespace can go)."""
    for pod in kube.pods(ns, RUNNER):
        kube.core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
    assert kube.wait_phase("jobcancellations", ns, name, timeout=30)["status"]["phase"] == "Completed"


def test_ctrl_c_stops_watching_not_the_cancellation(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    small_job(kube, ns, stop="never", grace=60)
    with sigint_as_from_a_terminal():
        proc = subprocess.Popen([sys.executable, "-m", "necrocode.cli", "job", "cancel", "job1", "-n", ns,
                                 "--kubeconfig", str(cluster.kubeconfig), "--grace-period", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("jobcancellation.necrocode.io/job1-cancel-") and first.endswith(" created\n")
    wait_for(lambda: (only_cancellation(kube, ns).get("status") or {}).get("phase") == "Running",
             what="cancellation running")
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"still running; follow it with: necrocode job cancel-status job1 -n {ns} --watch" in err
    assert "phase Running" in out and "\x1b[" not in out  # piped: plain lines
    name = first.split("/")[1].split()[0]
    time.sleep(1)
    assert kube.get("jobcancellations", ns, name)["status"]["phase"] == "Running"
    finish_lost_runners(kube, ns, name)


def test_help_of_every_command_has_examples(cluster: ClusterInfo) -> None:
    for args in ([], ["job"], ["job", "cancel"], ["job", "cancel-status"], ["job", "cancellations"], ["completion"]):
        res = CliRunner().invoke(necrocode_cli.cli, [*args, "--help"])
        assert res.exit_code == 0, res.output
        assert "Examples:" in res.stdout
        if len(args) == 2:
            assert "Exit codes:" in res.stdout and "130" in res.stdout


def test_terminal_display_redraws_in_place() -> None:
    import io

    stream = io.StringIO()
    display = live.Display(stream, True, views.live_block)
    obj: dict[str, Any] = {"kind": "JobCancellation", "metadata": {"name": "c", "namespace": "n"},
                           "spec": {"jobName": "j"}, "status": {"phase": "Running", "steps": STEPS_RUNNING}}
    display.update([obj])
    first = stream.getvalue()
    assert "[x] Validate" in first and "[>] CleanupResources" in first and "[ ] Verify" in first
    display.update([obj])
    assert stream.getvalue()[len(first):].startswith(f"\x1b[{first.count(chr(10))}F\x1b[J")


# ----------------------------------------------------------------------------- conventions (issue 16)
def test_cancel_several_jobs_by_name_and_selector(kube: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    ns = namespace
    for job, team in (("m1", None), ("m2", "x"), ("m3", "x"), ("done", "x"), ("m4", None)):
        kube.create_job(ns, job, phase="Succeeded" if job == "done" else "Running")
        if team:
            kube.custom.patch_namespaced_custom_object(G, V, ns, "agentjobs", job, {"metadata": {"labels": {"team": team}}})
        if job in ("m1", "m2", "m3"):
            kube.create_runner(ns, job, "a", name=f"{job}-a-runner")
            kube.create_task(ns, job, "a", "Running", runner=f"{job}-a-runner")
    wait_for(lambda: len([p for p in kube.pods(ns, RUNNER) if p.status.phase == "Running"]) == 3, what="runners")

    # job completion from the cluster
    comp = ShellComplete(necrocode_cli.cli, {}, "necrocode", options.COMPLETE_VAR)
    got = comp.get_completions(["job", "cancel", "-n", ns, "--kubeconfig", str(cluster.kubeconfig)], "m")
    assert [c.value for c in got] == ["m1", "m2", "m3", "m4"]

    # a missing name: nothing is created
    res = run(cluster, "job", "cancel", "m4", "ghost", "-n", ns)
    assert (res.exit_code, res.stderr) == (7, f"error: job ghost not found in namespace {ns}; nothing was created\n")
    assert cancellations(kube, ns) == []

    # m1 by name, m2 and m3 by label (done is finished: skipped), in a subprocess: its stdout is a pipe
    proc = subprocess.run([sys.executable, "-m", "necrocode.cli", "job", "cancel", "m1", "-l", "team=x", "-n", ns,
                           "--reason", "bulk", "--ttl", "1h", "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TERM": "xterm-256color"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"[^\x00-\x09\x0b-\x1f\x7f-\x9f]*", proc.stdout + proc.stderr)  # no control sequence
    assert proc.stderr == "job done skipped: already Succeeded\n"
    records = {o["spec"]["jobName"]: o for o in cancellations(kube, ns)}
    assert sorted(records) == ["m1", "m2", "m3"]  # one each
    for job, obj in records.items():
        assert obj["spec"]["ttlSecondsAfterFinished"] == 3600 and obj["spec"]["reason"] == "bulk"
        assert obj["metadata"]["labels"] == {"necrocode.io/job": job}
    lines = proc.stdout.splitlines()
    assert lines[:3] == [f"jobcancellation.necrocode.io/{records[j]['metadata']['name']} created" for j in ("m1", "m2", "m3")]
    assert any(re.match(r"^\[\s*[\d.]+s\] m2-cancel-\S+: step TerminateRunners: Succeeded", ln) for ln in lines)
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("JOB "))):]
    assert table[0].split() == ["JOB", "CANCELLATION", "PHASE", "MESSAGE"]
    assert [r.split()[:3] for r in table[1:4]] == [[j, records[j]["metadata"]["name"], "Completed"] for j in ("m1", "m2", "m3")]
    assert table[4].split()[:3] == ["done", "-", "Skipped"] and table[4].endswith("already Succeeded")
    assert table[5:] == ["4 jobs: 3 Completed, 1 Skipped"]

    # a finished job named explicitly is the operator's to refuse: Rejected, and the exit code says so
    res = run(cluster, "job", "cancel", "done", "m4", "-n", ns, "--timeout", "60")
    assert res.exit_code == 5, res.output
    rows = [r.split()[:3] for r in res.stdout.splitlines() if r.split()[0] in ("done", "m4")]
    assert [(job, phase) for job, _, phase in rows] == [("done", "Rejected"), ("m4", "Completed")]
    assert res.stdout.splitlines()[-1] == "2 jobs: 1 Rejected, 1 Completed"
    # --no-wait -o name: the created names alone on stdout
    res = run(cluster, "job", "cancel", "done", "m4", "-n", ns, "--no-wait", "-o", "name")
    assert res.exit_code == 0, res.output
    created = res.stdout.splitlines()
    assert len(created) == 2 and all(n.startswith("jobcancellation.necrocode.io/") for n in created)
    assert res.stderr == "".join(f"{n} created\n" for n in created)

    # the records through -o jsonpath and -o wide
    res = run(cluster, "job", "cancellations", "-n", ns, "-o",
              'jsonpath={range .items[*]}{.spec.jobName}{" "}{.spec.ttlSecondsAfterFinished}{"\\n"}{end}')
    lines = res.stdout.splitlines()
    assert len(lines) == 7 and sorted(ln for ln in lines if ln[:3] in ("m1 ", "m2 ", "m3 ")) == [
        "m1 3600", "m2 3600", "m3 3600"]
    res = run(cluster, "job", "cancellations", "-n", ns, "-o", "wide", "--job", "m2")
    header, row = res.stdout.splitlines()
    assert header.split()[9:] == ["TASKS", "BLOCKED", "LEASES", "DELETED", "KEPT", "FORCE", "GRACE", "TTL", "REASON",
                                  "MESSAGE"]
    assert row.split()[9:17] == ["1", "0", "0", "0", "0", "false", "30", "3600"]  # grace: the CRD's default


def ca_bytes(cluster: ClusterInfo) -> tuple[str, bytes]:
    """The API server's URL and CA certificate, from the test kubeconfig."""
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx = next(c for c in cfg["contexts"] if c["name"] == cfg["current-context"])["context"]
    clus = next(c for c in cfg["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    if "certificate-authority-data" in clus:
        return clus["server"], base64.b64decode(clus["certificate-authority-data"])
    if "certificate-authority" not in clus:
        pytest.skip("the cluster's kubeconfig names no CA")
    return clus["server"], (cluster.kubeconfig.parent / clus["certificate-authority"]).read_bytes()


def test_in_a_pod_without_a_kubeconfig_the_service_account_is_used(kube: Kubectl, cluster: ClusterInfo,
                                                                   solo_namespace: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ns = solo_namespace
    grant(kube, ns, "inpod", [{"apiGroups": [G], "resources": ["jobcancellations", "taskcancellations"],
                               "verbs": ["list"]}])
    hand_made(kube, ns, "pod-rec", "ghost", "Completed")
    token = kube.core.create_namespaced_service_account_token("inpod", ns, {"spec": {"expirationSeconds": 600}})
    server, ca = ca_bytes(cluster)
    sa = tmp_path / "serviceaccount"  # what the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount
    sa.mkdir()
    (sa / "token").write_text(token.status.token)
    (sa / "ca.crt").write_bytes(ca)
    (sa / "namespace").write_text(ns)
    monkeypatch.setattr(kubeconfig, "SERVICEACCOUNT_DIR", str(sa))
    url = urlsplit(server)
    env = {"KUBECONFIG": None, "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": url.hostname,
           "KUBERNETES_SERVICE_PORT": str(url.port or 443), "POD_NAMESPACE": None}

    def listed() -> Result | None:  # no kubeconfig, no -n: the pod's namespace, as the ServiceAccount
        res = CliRunner(env=env).invoke(necrocode_cli.cli, ["job", "cancellations", "-o", "name"])
        return res if res.exit_code == 0 else None

    res = wait_for(listed, timeout=15, what="the role to take effect")
    assert res.stdout == "jobcancellation.necrocode.io/pod-rec\n"
    # and who it is: the API server says so
    res = CliRunner(env=env).invoke(necrocode_cli.cli, ["job", "cancellations", "-A"])
    assert res.exit_code == 8
    assert res.stderr == (f'error: forbidden: user "system:serviceaccount:{ns}:inpod" cannot list '
                          "jobcancellations.necrocode.io across all namespaces\n")


def test_as_and_as_group_impersonate_like_kubectl(kube: Kubectl, cluster: ClusterInfo, solo_namespace: str) -> None:
    ns = solo_namespace
    kube.create_job(ns, "job1")
    user = grant(kube, ns, "imp", [{"apiGroups": [G], "resources": ["agentjobs"], "verbs": ["get"]},
                                   {"apiGroups": [G], "resources": ["jobcancellations", "taskcancellations"],
                                    "verbs": ["get", "list", "create"]}])
    args = ["job", "cancel", "job1", "-n", ns, "--no-wait", "-o", "json", "--as", user,
            "--as-group", "necrocode-testers", "--as-group", "team-a"]
    res = wait_for(lambda: (r := run(cluster, *args)).exit_code == 0 and r, timeout=15, what="the role to take effect")
    stored = kube.get("jobcancellations", ns, json.loads(res.stdout)["metadata"]["name"])
    # recorded by the API server's admission policy from the request's user: the impersonated one
    annotations = stored["metadata"]["annotations"]
    assert annotations["necrocode.io/requester"] == user != me(kube)
    assert {"necrocode-testers", "team-a"} <= set(annotations["necrocode.io/requester-groups"].split(","))
    assert stored["spec"]["requestedBy"] == user  # the SelfSubjectReview answers for the impersonated user too
    # --as before the subcommand; a user without rights is refused as that user
    res = run(cluster, "--as", f"system:serviceaccount:{ns}:nobody", "job", "cancellations", "-n", ns)
    assert res.exit_code == 8
    assert res.stderr == (f'error: forbidden: user "system:serviceaccount:{ns}:nobody" cannot list '
                          f"jobcancellations.necrocode.io in namespace {ns}\n")


def on_a_terminal(cluster: ClusterInfo, *args: str, **env: str) -> str:
    """The CLI's output with its stdout on a pseudo-terminal."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "necrocode.cli", *args, "--kubeconfig", str(cluster.kubeconfig)],
                            stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL,
                            env={**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, "TERM": "xterm", **env})
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    return out.decode()


def test_a_terminal_gets_colour_and_no_color_turns_it_off(kube: Kubectl, cluster: ClusterInfo,
                                                           solo_namespace: str) -> None:
    ns = solo_namespace
    hand_made(kube, ns, "c-1", "c", "Completed")
    assert "phase:      \x1b[32mCompleted\x1b[0m" in on_a_terminal(cluster, "job", "cancel-status", "c", "-n", ns)
    plain = on_a_terminal(cluster, "job", "cancel-status", "c", "-n", ns, NO_COLOR="1")
    assert "phase:      Completed" in plain and "\x1b" not in plain
    piped = run(cluster, "job", "cancel-status", "c", "-n", ns)
    assert "phase:      Completed" in piped.stdout and "\x1b" not in piped.stdout

