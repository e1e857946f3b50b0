"""Many at once (issue 19, item 1): `jobs` JobCancellations of `per_job` runners each, all
created within about a second (a budget cut stopping every job of a team), against the floor
approach over the same jobs; timed until every one is terminal, every runner checked gone."""

from __future__ import annotations

import asyncio
import time

from benchmarks.approaches import floor as floor_approach
from benchmarks.cluster import RssSampler, delta
from benchmarks.common import Obj, median, say
from benchmarks.harness import Harness
from benchmarks.world import GoneWatch, wait_phases
from necrocode.concurrency import bounded
from necrocode.kube import Kube, lease_path, nc_path

RUNNERS = "necrocode.io/role=runner"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"100x50,1000x5" -> [(100, 50), (1000, 5)]: jobs x runners per job."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            jobs, _, per = part.partition("x")
            if not (jobs.isdigit() and per.isdigit() and int(jobs) > 0 and int(per) > 0):
                raise ValueError(f"shape {part!r}: expected JOBSxRUNNERS, e.g. 1000x5")
            out.append((int(jobs), int(per)))
    return out


async def _world(h: Harness, tag: str, jobs: int, per_job: int) -> str:
    ns = await h.world.namespace(tag)
    await asyncio.gather(*(h.world.job(ns, f"j{j:04d}", per_job) for j in range(jobs)))
    await h.world.wait_running(ns, RUNNERS, jobs * per_job, timeout=1800)
    await asyncio.sleep(1.0)  # let kwok's status writes settle
    return ns


async def _left(h: Harness, ns: str) -> tuple[int, int]:
    """Runner pods still there and leases still held: both must be 0 after a cancellation."""
    pods = await h.world.count(ns, RUNNERS)
    leases, _ = await h.kube.list_all(lease_path(ns), label_selector="necrocode.io/repo-pool=bench")
    return pods, sum(1 for x in leases if (x.get("spec") or {}).get("holderIdentity"))


async def ours(h: Harness, jobs: int, per_job: int, create_concurrency: int = 50) -> Obj:
    """The JobCancellations created by `create_concurrency` clients at once (the spread from the
    first request to the last answer is recorded: the shape asks for all within one second);
    timed from the first request until the last is Completed. Operator CPU seconds, its peak
    RSS sampled over the window, its API requests per runner."""
    ns = await _world(h, "many", jobs, per_job)
    try:
        names = [f"stop-j{j:04d}" for j in range(jobs)]
        before = h.op.metrics(by_resource=True)
        rss = RssSampler(h.op)
        rss.start()
        cpu = h.cpu_start()
        prof = h.pprof(f"many-ours-{jobs}x{per_job}")
        t0 = time.perf_counter()
        created: list[float] = []

        async def create(j: int) -> None:
            await h.kube.create(nc_path(ns, "jobcancellations"), {
                "apiVersion": "necrocode.io/v1alpha1", "kind": "JobCancellation",
                "metadata": {"name": names[j]}, "spec": {"jobName": f"j{j:04d}", "reason": "benchmark"}})
            created.append(time.perf_counter() - t0)

        await bounded(range(jobs), create, create_concurrency)
        done = await wait_phases(h.kube, ns, "jobcancellations", set(names), timeout=1800)
        seconds = max(done.values()) - t0
        cpu_used = h.cpu_since(cpu)
        if prof is not None:
            await prof
        peak = await rss.stop()
        each = delta(before, h.op.metrics(by_resource=True))  # "VERB resource" -> requests
        calls: dict[str, int] = {}
        for key, n in each.items():
            verb = key.split(" ", 1)[0]
            calls[verb] = calls.get(verb, 0) + n
        pods_left, held = await _left(h, ns)
        assert pods_left == 0 and held == 0, (pods_left, held)
        last = await h.kube.get(nc_path(ns, "jobcancellations", names[-1]))
        return {"_final_status": last.get("status"), "seconds": seconds, "creation_spread_seconds": max(created),
                "first_completed_seconds": min(done.values()) - t0,
                "median_completed_seconds": median([v - t0 for v in done.values()]),
                "api_calls": calls, "api_calls_total": sum(calls.values()),
                "api_calls_per_runner": round(sum(calls.values()) / (jobs * per_job), 2),
                "api_calls_per_cancellation_by_resource": {k: round(v / jobs, 2) for k, v in sorted(each.items())},
                "operator_cpu_seconds": cpu_used.get("operator"), "cpu_seconds": cpu_used,
                "operator_peak_rss_mib": peak, "operator_vmhwm_mib": h.op.memory().get("VmHWM"),
                "pods_left": pods_left, "leases_held": held}
    finally:
        await h.world.drop_namespace(ns, wait=600)


async def floor(h: Harness, jobs: int, per_job: int, contract: bool = False, create_concurrency: int = 50,
                final_status: Obj | None = None, budgeted: bool = False) -> Obj:
    """The floor over the same jobs (approaches.floor.many: each job's promised writes as if
    alone, all jobs at once, one client of raw_concurrency connections), timed from the first
    write until the last job's last write; every runner checked gone and every lease released.
    `contract`: the contract's floor instead (approaches.floor.many_contract: the requests
    created too, at the same concurrency as ours, and each cancellation's own promised writes),
    with the operator stopped meanwhile (it would act on those requests). `budgeted`: under the
    operator's API budget instead of raw_concurrency (approaches.floor.run_budgeted), the floor
    or (with `contract`) the contract's floor, whose requests are still created unbudgeted."""
    tag = f"{'contract' if contract else 'floor'}{'budget' if budgeted else ''}"
    ns = await _world(h, f"many{tag}", jobs, per_job)
    if contract:
        h.op.stop()
    try:
        watch = GoneWatch(h.kube, ns, RUNNERS)
        pods = await watch.start()
        pods_of: dict[str, list[str]] = {}
        for p in pods:  # <job>-<task>-runner
            pods_of.setdefault(p.split("-", 1)[0], []).append(p)
        client, concurrency = (floor_approach.budgeted_client(h) if budgeted else
                               (Kube(h.kube.creds, concurrency=h.raw_concurrency, timeout=120), h.raw_concurrency))
        # the requests themselves are created unbudgeted, as ours' are by the harness
        creator = Kube(h.kube.creds, concurrency=h.raw_concurrency, timeout=120) if contract and budgeted else client
        try:
            cpu = h.cpu_start()
            prof = h.pprof(f"many-{tag}-{jobs}x{per_job}")
            t0 = time.perf_counter()
            if contract:
                calls = await floor_approach.many_contract(client, ns, pods_of, watch, concurrency,
                                                           create_concurrency, final_status, creator=creator)
            else:
                calls = await floor_approach.many(client, ns, pods_of, watch, concurrency)
            seconds = time.perf_counter() - t0
            cpu_used = h.cpu_since(cpu)
            if prof is not None:
                await prof
        finally:
            await watch.stop()
            await client.close()
            if creator is not client:
                await creator.close()
        pods_left, held = await _left(h, ns)
        assert pods_left == 0 and held == 0, (pods_left, held)
        return {"seconds": seconds, "api_calls_total": calls, "api_calls_per_runner": round(calls / len(pods), 2),
                "cpu_seconds": cpu_used, "pods_left": pods_left, "leases_held": held}
    finally:
        await h.world.drop_namespace(ns, wait=600)
        if contract:
            h.op.start()


async def run(h: Harness, shapes: list[tuple[int, int]], reps: int, with_floor: bool = True,
              create_concurrency: int = 50, contract: bool = True, budgeted: bool = False,
              budgeted_contract: bool = False) -> Obj:
    """Each shape `reps` times, ours, the floor, (`contract`) the contract's floor,
    (`budgeted`) the floor under the operator's budget and (`budgeted_contract`) the contract's
    floor under it interleaved; a failed run is recorded and counted (the goal is every run
    terminal with every runner gone)."""
    out: Obj = {}
    names = ("ours", *(("floor",) if with_floor else ()), *(("contract",) if with_floor and contract else ()),
             *(("floor-budgeted",) if with_floor and budgeted else ()),
             *(("contract-budgeted",) if with_floor and budgeted_contract else ()))
    for jobs, per_job in shapes:
        shape: Obj = out.setdefault(f"{jobs}x{per_job}", {"jobs": jobs, "runners_per_job": per_job,
                                                          "create_concurrency": create_concurrency})
        final_status: Obj | None = None  # the record ours wrote last: the contract floor writes the same
        for rep in range(reps):
            for name in names:
                r: Obj = shape.setdefault(name, {"runs": [], "failed_runs": []})
                try:
                    if name == "ours":
                        res = await ours(h, jobs, per_job, create_concurrency)
                        final_status = res.pop("_final_status", None) or final_status
                    else:
                        res = await floor(h, jobs, per_job, contract=name.startswith("contract"),
                                          create_concurrency=create_concurrency, final_status=final_status,
                                          budgeted=name.endswith("-budgeted"))
                except Exception as exc:  # recorded and reported, and the run goes on
                    r["failed_runs"].append(repr(exc)[:1000])
                    say(f"many {jobs}x{per_job} rep {rep + 1} {name} FAILED: {exc!r}"[:400])
                    continue
                r["runs"].append(res)
                say(f"many {jobs}x{per_job} rep {rep + 1}/{reps} {name:<14} {res['seconds']:8.2f} s, "
                    f"{res['api_calls_per_runner']} calls/runner"
                    + (f", created within {res['creation_spread_seconds']:.2f} s, operator "
                       f"{res['operator_cpu_seconds']} CPU-s, peak RSS {res['operator_peak_rss_mib']} MiB"
                       if name == "ours" else ""))
    return out
