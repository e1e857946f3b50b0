"""The operator's API budget, respected against the real API server (docs/operations.md, "The
API budget"): a cancellation run by an operator with NECROCODE_API_QPS=20 never makes more than
qps * T + burst requests in any T seconds, by its own necrocode_api_requests_total; and the
client alone, under a burst of requests, keeps a cancellation's in-flight and rate budgets, and
a log read that hangs at a lost node's kubelet takes none of the short requests' slots.
Upper bounds, not timing goals: a slow machine only makes the counts smaller."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from necrocode.budget import CURRENT, Budget
from necrocode.kube import Kube, core_path, load_credentials
from necrocode.planning import RetryPolicy
from tests.support.faultproxy import FaultProxy, proxy_kubeconfig
from tests.support.kube import ClusterInfo, Kubectl, create_unreachable_node, wait_for
from tests.support.operators import alive, evidence, populate, run_operator

JOB = "job"
QPS, BURST = 20, 5
RUNNERS = 30


def requests_and_waits(port: int) -> tuple[float, dict[str, float]]:
    """necrocode_api_requests_total (all verbs) and necrocode_api_budget_wait_seconds_total by scope."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total, waits = 0.0, {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "necrocode_api_requests_total":
                total += s.value
            elif s.name == "necrocode_api_budget_wait_seconds_total":
                waits[s.labels["scope"]] = s.value
    return total, waits


def concurrency_limit(port: int) -> float:
    """necrocode_api_concurrency_limit: the requests the operator may have in flight now."""
    return gauge(port, "necrocode_api_concurrency_limit")


def gauge(port: int, name: str) -> float:
    """A sample of the operator's /metrics, summed over its labels (0: not exported)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def assert_within_rate(samples: list[tuple[float, float, float]], qps: float, burst: int) -> None:
    """samples: (time before the read, count, time after the read). Requests counted between two
    reads were sent between the first's start and the second's end: no more than the bucket
    allows in that span."""
    worst = 0.0
    for i, (start, before, _) in enumerate(samples):
        for _, after, end in samples[i + 1:]:
            allowed = burst + qps * (end - start)
            worst = max(worst, (after - before) / allowed)
            assert after - before <= allowed, (
                f"{after - before:.0f} requests in {end - start:.2f}s: more than {burst} + {qps}/s allow")
    print(f"\nbusiest span used {worst:.0%} of the budget")


def test_a_cancellation_keeps_to_the_operators_request_budget(kube: Kubectl, cluster: ClusterInfo,
                                                              solo_namespace: str, tmp_path: Path) -> None:
    from hack.localcluster import free_port

    ns, log, port = solo_namespace, tmp_path / "operator.log", free_port()
    populate(kube, ns, RUNNERS)
    with run_operator(cluster, ns, log, NECROCODE_METRICS_PORT=str(port), NECROCODE_API_QPS=str(QPS),
                      NECROCODE_API_BURST=str(BURST), NECROCODE_CANCELLATION_CONCURRENCY="3") as op:
        def serving() -> bool:
            alive(op, log)
            try:
                return bool(requests_and_waits(port))
            except OSError:  # not listening yet
                return False

        wait_for(serving, timeout=30, what="the operator's metrics")
        kube.cancel_job(ns, "stop", JOB, gracePeriodSeconds=20, escalateAfterSeconds=5)
        samples: list[tuple[float, float, float]] = []

        def finished() -> bool:
            alive(op, log)
            start = time.monotonic()
            count, _ = requests_and_waits(port)
            samples.append((start, count, time.monotonic()))
            st = kube.get("jobcancellations", ns, "stop").get("status") or {}
            return st.get("phase") in ("Completed", "PartiallyCompleted", "Failed")

        try:
            wait_for(finished, timeout=120, interval=0.1, what="the cancellation to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{evidence(log)}") from None
        st = kube.get("jobcancellations", ns, "stop")["status"]
        assert st["phase"] == "Completed", evidence(log)
        assert st["progress"]["runnersTerminated"] == RUNNERS
        _, waits = requests_and_waits(port)
    made = samples[-1][1] - samples[0][1]
    assert made >= 3 * (QPS + BURST), f"only {made} requests: the budget was never put to the test"
    assert_within_rate(samples, QPS, BURST)
    # both budgets made requests wait, and said so: the rate (global), and the cancellation's
    # three slots (its context reached the requests of its steps)
    assert waits.get("global", 0) > 0 and waits.get("cancellation", 0) > 0, waits


async def test_the_client_keeps_a_cancellations_in_flight_and_rate_budgets(cluster: ClusterInfo,
                                                                           solo_namespace: str) -> None:
    """A burst of 60 requests from one cancellation's context (as its steps make them):
    never more than 4 in flight, never more than 10/s + 10 over any span, where the client
    alone would send them all at once."""
    sent: list[float] = []
    in_flight = peak = 0

    class Counting(Kube):
        async def _send(self, *args: object, **kwargs: object) -> dict:  # type: ignore[override]
            nonlocal in_flight, peak
            sent.append(time.monotonic())
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await super()._send(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                in_flight -= 1

    kube = Counting(load_credentials(str(cluster.kubeconfig)), concurrency=50)
    token = CURRENT.set(Budget("cancellation", qps=10, concurrency=4))
    try:
        path = core_path(solo_namespace, "configmaps")
        await asyncio.gather(*(kube.list_page(path, limit=1) for _ in range(60)))
    finally:
        CURRENT.reset(token)
        await kube.close()
    assert len(sent) == 60 and peak <= 4
    assert_within_rate([(t, i, t) for i, t in enumerate(sent)], qps=10, burst=10)


async def test_a_log_read_that_hangs_takes_no_slot_of_the_short_requests(kube: Kubectl, cluster: ClusterInfo,
                                                                         solo_namespace: str) -> None:
    """A lost node whose kubelet port takes the API server's connection and never answers (a
    listener of this test's, on loopback): reading a runner's log there hangs until the API
    server gives up. A client with one slot for its short requests still gets a GET through
    meanwhile, as log reads have a lane of their own (Kube.read_tail). When they shared the
    slot, the GET waited for the read to end, and the read was over when the GET returned."""
    ns, node, runner = solo_namespace, f"silent-{uuid.uuid4().hex[:8]}", "job1-a-runner"
    knocked = asyncio.Event()

    async def silent_kubelet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        knocked.set()
        await reader.read()  # no answer, until the API server closes the connection
        writer.close()

    server = await asyncio.start_server(silent_kubelet, "127.0.0.1", 0)
    client = Kube(load_credentials(str(cluster.kubeconfig)), concurrency=1, timeout=60,
                  retry=RetryPolicy(attempts=1))
    read: asyncio.Task[object] | None = None
    try:
        create_unreachable_node(kube, node, server.sockets[0].getsockname()[1])
        kube.create_runner(ns, "job1", "a", node=node)
        read = asyncio.create_task(client.read_tail(core_path(ns, "pods", runner, "log"), 1024))
        await asyncio.wait_for(knocked.wait(), timeout=60)  # the read is at the kubelet's door
        pod = await client.get(core_path(ns, "pods", runner))
        assert pod["spec"]["nodeName"] == node
        assert not read.done(), "the GET waited for the log read: they share the in-flight slot"
        assert client.budget.concurrency == 1 and client.streams.concurrency > 1
    finally:
        if read is not None:
            read.cancel()
            with contextlib.suppress(BaseException):
                await read
        await client.close()
        server.close()
        kube.core.delete_namespaced_pod(runner, ns, grace_period_seconds=0)
        kube.core.delete_node(node)


def test_an_api_server_far_away_gets_more_requests_in_flight(kube: Kubectl, cluster: ClusterInfo,
                                                             solo_namespace: str, tmp_path: Path) -> None:
    """The adaptive in-flight limit (the default) against an API server as a managed control
    plane across a network is: a TCP proxy holds every chunk 50 ms, so a round trip costs about
    the same however many are in flight. The limit starts at 3, while the operator measures the
    round trip, and opens past 8 while one cancellation of 200 runners makes its deletes, by the
    operator's own necrocode_api_concurrency_limit; the cancellation ends Completed. On a fixed
    limit the gauge would not move (and before session 20 there was none). The round trip it was
    judged against, necrocode_api_min_rtt_seconds, shows the proxy's delay, and the event loop's
    lateness is exported beside it (necrocode_event_loop_lag_seconds, session 22), and so are
    its garbage collections' pauses (necrocode_gc_pause_seconds)."""
    from hack.localcluster import free_port

    ns, log, port = solo_namespace, tmp_path / "operator.log", free_port()
    host, api_port = kube.api.configuration.host.removeprefix("https://").rsplit(":", 1)
    populate(kube, ns, 200)
    with FaultProxy(host, int(api_port)) as proxy:
        kc = proxy_kubeconfig(cluster.kubeconfig, tmp_path / "proxied.kubeconfig", proxy)
        proxy.delay(0.05)
        with run_operator(cluster, ns, log, NECROCODE_KUBECONFIG=str(kc), KUBECONFIG=str(kc),
                          NECROCODE_METRICS_PORT=str(port)) as op:
            def serving() -> bool:
                alive(op, log)
                try:
                    return concurrency_limit(port) > 0
                except OSError:  # not listening yet
                    return False

            wait_for(serving, timeout=30, what="the operator's metrics")
            assert concurrency_limit(port) == 3
            kube.cancel_job(ns, "stop", JOB, gracePeriodSeconds=20, escalateAfterSeconds=5)
            peak = 0.0

            def opened() -> bool:
                nonlocal peak
                alive(op, log)
                peak = max(peak, concurrency_limit(port))
                st = kube.get("jobcancellations", ns, "stop").get("status") or {}
                assert peak > 8 or st.get("phase") not in ("Completed", "PartiallyCompleted", "Failed"), (
                    f"finished with the limit at most {peak}\n{evidence(log)}")
                return peak > 8

            wait_for(opened, timeout=120, interval=0.05, what="the in-flight limit opened past 8")
            assert gauge(port, "necrocode_api_min_rtt_seconds") >= 0.05
            assert gauge(port, "necrocode_event_loop_lag_seconds") > 0  # fed: the worst of a second is never exactly on time
            assert gauge(port, "necrocode_gc_pause_seconds_count") > 0  # the process's collections are timed
            wait_for(lambda: (kube.get("jobcancellations", ns, "stop").get("status") or {}).get("phase")
                     in ("Completed", "PartiallyCompleted", "Failed"), timeout=120, what="the cancellation to finish")
            st = kube.get("jobcancellations", ns, "stop")["status"]
            assert st["phase"] == "Completed", evidence(log)
            assert st["progress"]["runnersTerminated"] == 200
