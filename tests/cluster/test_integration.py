"""The Python integration points for NecroCode's dispatcher and runner monitor."""

from __future__ import annotations

import asyncio

import pytest

from necrocode.integration import CancellationClient
from tests.support.kube import ClusterInfo, Kubectl

pytestmark = pytest.mark.usefixtures("operator")


async def test_dispatcher_sees_a_cancelled_job_and_follows_events(kube: Kubectl, cluster: ClusterInfo,
                                                                  namespace: str) -> None:
    ns = namespace
    kube.create_job(ns, "job")
    kube.create_job(ns, "other")
    kube.create_runner(ns, "job", "t0", stop="slow", after=1)
    kube.create_task(ns, "job", "t0", "Running", runner="job-t0-runner")
    client = CancellationClient.from_kubeconfig(str(cluster.kubeconfig))
    try:
        assert not await client.is_job_cancelled(ns, "job")
        runners = await client.get_job_runners(ns, "job")
        assert [(r.name, r.task, r.terminating) for r in runners] == [("job-t0-runner", "t0", False)]
        assert not await client.is_job_cancelled(ns, "ghost")

        seen: list[str] = []

        async def follow() -> None:
            async for ev in client.cancellation_events(ns):
                seen.append(ev.phase)
                if ev.phase == "Completed":
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.5)
        kube.cancel_job(ns, "stop", "job")
        await asyncio.wait_for(follower, timeout=60)
        assert seen[-1] == "Completed" and "Running" in seen
        assert await client.is_job_cancelled(ns, "job")
        assert not await client.is_job_cancelled(ns, "other")
        await client.block_job_assignment(ns, "other")
        assert await client.is_job_cancelled(ns, "other")
    finally:
        await client.close()
