"""Lists of one job's objects asked at once go out as one request (necrocode.listbatch), on the
real API server: its set-based selector finds exactly each job's objects (with the other terms
and as metadata only), and whole cancellations of many jobs of one namespace at once each act on
their own job's tasks, runners and slots, and count them exactly."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from necrocode.kube import Kube, core_path, nc_path
from tests.support.kube import Kubectl


async def test_lists_asked_at_once_are_one_request_each_answer_its_own_job(
        kube: Kubectl, namespace: str, api: Kube) -> None:
    jobs = [f"j{i}" for i in range(6)]
    for job in [*jobs, "j10"]:  # j10: another job whose name starts like j1
        kube.create_job(namespace, job)
        for t in ("a", "b"):
            kube.create_runner(namespace, job, t, stop="never")
            kube.create_task(namespace, job, t, "Running", runner=f"{job}-{t}-runner")
    kube.create_configmap(namespace, "j1-scratch", "j1", "scratch")  # not a runner: the role term excludes it
    lists = api.coalesce_lists()
    pods = core_path(namespace, "pods")
    before = api.calls.get("GET", 0)
    got = await asyncio.gather(*(api.list_all(pods, label_selector=f"necrocode.io/job={j},necrocode.io/role=runner",
                                              meta_only=True) for j in jobs))
    for job, (items, rv) in zip(jobs, got, strict=True):
        assert sorted(p["metadata"]["name"] for p in items) == [f"{job}-a-runner", f"{job}-b-runner"]
        assert items[0]["kind"] == "PartialObjectMetadata" and rv
    sent = api.calls.get("GET", 0) - before
    assert (lists.asked, lists.sent, sent) == (6, 1, 1), "asked in one turn of the loop: one request"

    tasks = await asyncio.gather(*(api.list_all(nc_path(namespace, "agenttasks"), label_selector=f"necrocode.io/job={j}")
                                   for j in ("j1", "j10", "nojob")))
    assert [sorted(t["spec"]["taskId"] for t in items) for items, _ in tasks] == [["a", "b"], ["a", "b"], []]
    assert {t["metadata"]["labels"]["necrocode.io/job"] for t in tasks[1][0]} == {"j10"}


@pytest.mark.usefixtures("operator")
def test_many_cancellations_at_once_each_act_on_their_own_job(kube: Kubectl, namespace: str) -> None:
    jobs = [f"job{i}" for i in range(8)]
    for job in jobs:
        kube.create_job(namespace, job)
        for t in ("a", "b"):
            kube.create_runner(namespace, job, t)
            kube.create_task(namespace, job, t, "Running", runner=f"{job}-{t}-runner", slot=f"{job}-slot-{t}")
            kube.create_lease(namespace, f"{job}-slot-{t}", job=job, task_id=t, holder=f"{job}-{t}-runner")
        kube.create_task(namespace, job, "later", "Pending", depends_on=["a"])
        kube.create_task(namespace, job, "done", "Done")
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda j: kube.cancel_job(namespace, f"stop-{j}", j), jobs))
    for job in jobs:
        st = kube.wait_phase("jobcancellations", namespace, f"stop-{job}", timeout=90)["status"]
        assert st["phase"] == "Completed", st
        p = st["progress"]
        assert (p["runnersTotal"], p["runnersTerminated"], p["tasksCancelled"], p["tasksUnaffected"],
                p["leasesReleased"]) == (2, 2, 3, 1, 2), (job, p)
        for t in ("a", "b", "later"):
            assert kube.task(namespace, job, t)["status"]["cancellation"]["cancelledBy"] == f"stop-{job}"
        assert kube.task(namespace, job, "done")["status"]["state"] == "Done"
    assert kube.pods(namespace, "necrocode.io/role=runner") == []
    for lease in kube.coord.list_namespaced_lease(namespace).items:
        assert not lease.spec.holder_identity, lease.metadata.name
