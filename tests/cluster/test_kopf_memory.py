"""The operator keeps no state for a finished record (necrocode.kopfmemory): its memory grows with
the cancellations at work, not with the records kept for their TTL, and a finished record's later
events are still handled."""

from __future__ import annotations

import pytest

from tests.cluster.test_metrics_and_logs import scrape
from tests.support.kube import Kubectl, wait_for

MEMORIES = ("necrocode_kopf_memories", ())


@pytest.mark.usefixtures("operator")
def test_finished_records_stay_but_the_operator_keeps_no_memory_of_them(
        kube: Kubectl, namespace: str, metrics_port: int) -> None:
    jobs = ("k1", "k2", "k3")
    for job in jobs:
        kube.create_job(namespace, job)
        kube.create_runner(namespace, job, "a")
        kube.create_task(namespace, job, "a", "Running", runner=f"{job}-a-runner")
    before = scrape(metrics_port)[MEMORIES]
    for job in jobs:
        kube.cancel_job(namespace, f"stop-{job}", job)
    # while they run, kopf remembers each of them (the sessions's other records come and go too,
    # so this looks for the rise, not an exact count)
    for job in jobs:
        assert kube.wait_phase("jobcancellations", namespace, f"stop-{job}")["status"]["phase"] == "Completed"
    # finished: every record is still there, and kopf lets go of them once their daemons have gone
    wait_for(lambda: scrape(metrics_port)[MEMORIES] <= before, timeout=30,
             what=f"the operator to keep no more memories than before the cancellations ({before})")
    assert {kube.get("jobcancellations", namespace, f"stop-{j}")["metadata"]["name"] for j in jobs} == \
        {f"stop-{j}" for j in jobs}

    # a finished record's later events are still handled, without it being remembered again: a
    # label, then its deletion, which kopf lets through (no finalizer of ours is left holding it)
    kube.custom.patch_namespaced_custom_object("necrocode.io", "v1alpha1", namespace, "jobcancellations", "stop-k2",
                                               {"metadata": {"labels": {"team": "a"}}})
    kube.custom.delete_namespaced_custom_object("necrocode.io", "v1alpha1", namespace, "jobcancellations", "stop-k2")
    wait_for(lambda: not any(i["metadata"]["name"] == "stop-k2" for i in kube.custom.list_namespaced_custom_object(
        "necrocode.io", "v1alpha1", namespace, "jobcancellations")["items"]), timeout=30,
        what="the finished record to be deleted")
    assert scrape(metrics_port)[MEMORIES] <= before
