"""The shared runner watch (necrocode.runnerwatch) on the real API server: the cancellations of one
namespace follow their runners through one watch, each handed only its own runners' events, and
a watch that breaks makes each of them list again instead of missing what happened. Whole
cancellations use it by default: every cluster test that cancels runners goes through it; here
its promises are checked one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from necrocode.clock import SystemClock
from necrocode.kube import Kube, core_path
from necrocode.runnerwatch import RESYNC, RunnerWatches, Subscription
from tests.cluster.test_metrics_and_logs import delta, scrape
from tests.support.faultproxy import FaultProxy, proxy_kubeconfig
from tests.support.kube import ClusterInfo, Kubectl, api_client


def runners(kube: Kubectl, ns: str, job: str, *tasks: str) -> None:
    for t in tasks:
        kube.create_runner(ns, job, t, stop="never")


async def listed(api: Kube, ns: str, job: str) -> str:
    """The resourceVersion of a list of the job's runners, as a terminator makes it."""
    _, rv = await api.list_all(core_path(ns, "pods"), label_selector=f"necrocode.io/job={job},necrocode.io/role=runner",
                               meta_only=True)
    return rv


async def next_event(sub: Subscription, want: str, kind: str = "DELETED", within: float = 30.0) -> list[dict[str, Any]]:
    """Events until one of `kind` for pod `want` (or RESYNC when want is "RESYNC"); all of them."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while True:
            ev = await sub.queue.get()
            seen.append(ev)
            name = ((ev.get("object") or {}).get("metadata") or {}).get("name")
            if (ev is RESYNC and want == "RESYNC") or (name == want and ev.get("type") == kind):
                return seen


def delete_now(kube: Kubectl, ns: str, name: str) -> None:
    kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


async def test_cancellations_of_one_namespace_share_one_watch_each_handed_its_own_runners(
        api: Kube, kube: Kubectl, namespace: str) -> None:
    runners(kube, namespace, "ja", "t1", "t2")
    runners(kube, namespace, "jb", "t1")
    watches = RunnerWatches(api, SystemClock())
    since_a, since_b = await listed(api, namespace, "ja"), await listed(api, namespace, "jb")
    watches_before = api.calls.get("WATCH", 0)
    async with watches.subscribe(namespace, "necrocode.io/job=ja,necrocode.io/role=runner", since_a) as a, \
            watches.subscribe(namespace, "necrocode.io/job=jb,necrocode.io/role=runner", since_b) as b:
        assert a is not None and b is not None
        assert list(watches.watches) == [namespace] and len(watches.watches[namespace].subscribers) == 2

        delete_now(kube, namespace, "ja-t1-runner")
        got_a = await next_event(a, "ja-t1-runner")
        delete_now(kube, namespace, "jb-t1-runner")
        got_b = await next_event(b, "jb-t1-runner")

        assert {e["object"]["metadata"]["labels"]["necrocode.io/job"] for e in got_a} == {"ja"}
        assert {e["object"]["metadata"]["labels"]["necrocode.io/job"] for e in got_b} == {"jb"}
        assert api.calls.get("WATCH", 0) - watches_before == 1, "one watch for both"
    assert watches.watches == {}, "the shared watch stops with its last subscriber"


async def test_a_subscriber_that_listed_before_an_event_is_handed_it_when_it_subscribes_later(
        api: Kube, kube: Kubectl, namespace: str) -> None:
    runners(kube, namespace, "ja", "t1")
    runners(kube, namespace, "jb", "t1")
    watches = RunnerWatches(api, SystemClock())
    since_a, since_b = await listed(api, namespace, "ja"), await listed(api, namespace, "jb")
    async with watches.subscribe(namespace, "necrocode.io/job=ja,necrocode.io/role=runner", since_a) as a:
        assert a is not None
        delete_now(kube, namespace, "jb-t1-runner")  # jb's runner goes between jb's list and its subscription
        delete_now(kube, namespace, "ja-t1-runner")
        await next_event(a, "ja-t1-runner")  # by then the shared watch has seen jb's too
        async with watches.subscribe(namespace, "necrocode.io/job=jb,necrocode.io/role=runner", since_b) as b:
            assert b is not None
            got = await next_event(b, "jb-t1-runner", within=5)
            assert RESYNC not in got


async def test_a_broken_shared_watch_makes_every_subscriber_list_again_and_goes_on(
        kube: Kubectl, cluster: ClusterInfo, namespace: str, tmp_path: Path) -> None:
    """Every connection reset by a TCP proxy between the client and the API server: the shared
    watch breaks, each subscriber is told to list again (what happened meanwhile is in that
    list), and the watch resumes where it was."""
    runners(kube, namespace, "ja", "t1")
    host, port = kube.api.configuration.host.removeprefix("https://").rsplit(":", 1)
    with FaultProxy(host, int(port)) as proxy:
        kc = proxy_kubeconfig(cluster.kubeconfig, tmp_path / "proxied.kubeconfig", proxy)
        api = api_client(kc)
        try:
            watches = RunnerWatches(api, SystemClock())
            since = await listed(api, namespace, "ja")
            async with watches.subscribe(namespace, "necrocode.io/job=ja,necrocode.io/role=runner", since) as a:
                assert a is not None
                runners(kube, namespace, "ja", "t2")
                await next_event(a, "ja-t2-runner", kind="ADDED")  # the shared watch is open
                proxy.reset()
                await next_event(a, "RESYNC")
                proxy.passthrough()
                delete_now(kube, namespace, "ja-t1-runner")
                await next_event(a, "ja-t1-runner")
        finally:
            await api.close()


@pytest.mark.usefixtures("operator")
def test_the_operator_follows_the_runners_of_concurrent_cancellations_in_a_namespace_with_one_watch(
        kube: Kubectl, namespace: str, metrics_port: int) -> None:
    """Three JobCancellations at once in one namespace, their runners on a lost node (they go
    only when forced, after the grace): while all three wait, the operator holds one watch of
    the namespace's runners, and every runner is gone at the end."""
    jobs = ("j1", "j2", "j3")
    for job in jobs:
        kube.create_job(namespace, job)
        for t in ("a", "b"):
            kube.create_runner(namespace, job, t, stop="never", grace=10)
            kube.create_task(namespace, job, t, "Running", runner=f"{job}-{t}-runner")
    before = scrape(metrics_port)
    for job in jobs:
        kube.cancel_job(namespace, f"stop-{job}", job, gracePeriodSeconds=10, escalateAfterSeconds=1)
    for job in jobs:
        status = kube.wait_phase("jobcancellations", namespace, f"stop-{job}", timeout=90)["status"]
        assert status["phase"] == "Completed", status
        assert status["progress"]["runnersForced"] == 2
    after = scrape(metrics_port)
    assert kube.pods(namespace, "necrocode.io/role=runner") == []
    assert delta(before, after, "necrocode_api_requests_total", verb="WATCH", resource="pods") == 1
