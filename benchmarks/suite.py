"""One benchmark run on a running control plane: the operator started, each measurement the
flags ask for made in turn, the results gathered into one object and written as they come."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks import leak, many, neighbour, report, scenarios
from benchmarks.approaches import APPROACHES
from benchmarks.cluster import CpuMeter, Operator
from benchmarks.common import GRACE, NODES, Obj, machine, say
from benchmarks.costs import write_costs
from benchmarks.harness import Harness
from benchmarks.world import World
from hack.localcluster import LocalCluster
from necrocode.kube import Kube, load_credentials


async def run(a: argparse.Namespace, out: Path, cluster: LocalCluster, kubeconfig: Path) -> Obj:
    """Every measurement the flags (--scenario and the counts) ask for, in this order: the
    approaches at each size (interleaved), write costs, reaction latency, many at once, then,
    each with operators of its own, peak RSS, the leak check and the good neighbour.
    results.json is rewritten after each, so a long run stopped early keeps its figures."""
    creds = load_credentials(str(kubeconfig))
    kube = Kube(creds, concurrency=100, timeout=120)
    world = World(kube)
    results: Obj = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                    "settings": {"reps": a.reps, "sizes": a.sizes, "reaction_reps": a.reaction_reps,
                                 "operator_concurrency": os.environ.get("NECROCODE_CONCURRENCY", "50"),
                                 "operator_adaptive_concurrency": os.environ.get("NECROCODE_ADAPTIVE_CONCURRENCY",
                                                                                 "true"),
                                 "operator_adaptive_tolerance_percent": os.environ.get("NECROCODE_ADAPTIVE_TOLERANCE_PERCENT",
                                                                                       "25"),
                                 "raw_client_concurrency": a.raw_concurrency, "grace_period_seconds": GRACE,
                                 "kwok_nodes": NODES, "kubectl_max_n": a.kubectl_max_n,
                                 "raw_delete_max_n": a.raw_delete_max_n,
                                 "kube_controller_manager": "--kube-api-qps=100 --kube-api-burst=200",
                                 "kube_apiserver": "--max-requests-inflight=800 --max-mutating-requests-inflight=400",
                                 "scenarios": a.scenarios, "many_shapes": a.many_shapes, "many_reps": a.many_reps,
                                 "many_create_concurrency": a.many_create_concurrency,
                                 "many_contract": a.many_contract,
                                 "many_budgeted_floor": a.many_budgeted_floor,
                                 "many_budgeted_contract": a.many_budgeted_contract, "budgets": a.budgets,
                                 "leak_cancellations": a.leak_cancellations, "leak_runners": a.leak_runners,
                                 "leak_reps": a.leak_reps},
                    "sizes": {}, "raw_limit": {}}
    op = Operator(kubeconfig, out, tag="operator")
    op.start(profile=a.profile)
    h = Harness(kube, world, op, a.kubectl, kubeconfig, raw_concurrency=a.raw_concurrency,
                meter=CpuMeter(cluster, op), pprof_seconds=a.apiserver_pprof, out=out)
    try:
        for n in a.sizes if "sizes" in a.scenarios else []:
            per: Obj = results["sizes"].setdefault(str(n), {})
            for rep in range(a.reps):
                for name in a.approaches:  # interleaved, so drift in the machine's load hits all alike
                    if (name == "kubectl" and n > a.kubectl_max_n) or (name == "raw-delete" and n > a.raw_delete_max_n):
                        continue
                    started = time.monotonic()
                    try:
                        r = await APPROACHES[name].run(h, n)
                    except Exception as exc:  # recorded and reported, and the run goes on
                        per.setdefault(name, {"runs": []}).setdefault("failed_runs", []).append(repr(exc)[:1000])
                        say(f"N={n:>5} rep {rep + 1}/{a.reps} {name:<15} FAILED: {exc!r}"[:400])
                        continue
                    per.setdefault(name, {"runs": []})["runs"].append(r)
                    say(f"N={n:>5} rep {rep + 1}/{a.reps} {name:<15} {r['seconds']:8.3f} s"
                        + (f"  ({r['api_calls_total']} operator API calls, in-flight limit {r['concurrency_limit']})"
                           if name == "ours" else "")
                        + f"  [{time.monotonic() - started:.0f}s with setup]")
                    if r.get("cpu_seconds"):
                        c = r["cpu_seconds"]
                        top = sorted(((v, k) for k, v in c.items() if not k.startswith("_")), reverse=True)[:4]
                        say(f"      cpu: {c['_busy_cores']} cores busy; " + ", ".join(f"{k} {v:.1f}s" for v, k in top))
            report.summarise(results)
            report.write(results, out)
        if "costs" in a.scenarios and a.write_costs:
            say(f"write costs: {a.write_costs} calls of each kind")
            results["write_costs"] = await write_costs(h, a.write_costs)
            for label, c in results["write_costs"].items():
                say(f"  {label:<38} {c['calls_per_second']:7.1f}/s  {c['cpu_ms_per_call_total']:6.2f} ms CPU/call "
                    f"(apiserver {c['cpu_ms_per_call'].get('kube-apiserver', 0):.2f}, "
                    f"etcd {c['cpu_ms_per_call'].get('etcd', 0):.2f}, kwok {c['cpu_ms_per_call'].get('kwok', 0):.2f})")
            report.write(results, out)
        if "reaction" in a.scenarios and a.reaction_reps:
            say(f"reaction latency: {a.reaction_reps} TaskCancellations")
            results["reaction"] = await scenarios.reaction(h, a.reaction_reps)
            r = results["reaction"]
            say(f"  p50 {r['p50_seconds'] * 1000:.0f} ms, p99 {r['p99_seconds'] * 1000:.0f} ms")
            report.write(results, out)
        if "many" in a.scenarios and a.many_reps:
            say(f"many at once: {a.many_shapes} (jobs x runners), {a.many_reps} reps, ours and the floor"
                + (" and the contract's floor" if a.many_contract else ""))
            results["many"] = await many.run(h, many.parse_shapes(a.many_shapes), a.many_reps,
                                             create_concurrency=a.many_create_concurrency, contract=a.many_contract,
                                             budgeted=a.many_budgeted_floor,
                                             budgeted_contract=a.many_budgeted_contract)
            report.summarise(results)
            report.write(results, out)
        results["operator_memory_after_all_mib"] = op.memory()
    finally:
        op.stop()
    if "rss" in a.scenarios and a.rss_pods:
        say(f"RSS: a fresh operator with {a.rss_pods} unrelated pods")
        results["rss"] = await scenarios.rss(kube, world, kubeconfig, out, a.rss_pods)
        say(f"  peak RSS {results['rss']['peak_rss_mib']} MiB")
        report.write(results, out)
    if "leak" in a.scenarios and a.leak_cancellations:
        runs: list[Obj] = []
        reps = max(1, a.leak_reps)
        for rep in range(reps):
            say(f"leak check {rep + 1}/{reps}: a fresh operator, {a.leak_cancellations} sequential "
                f"cancellations of {a.leak_runners} runners")
            try:
                runs.append(await leak.run(kube, world, kubeconfig, out, a.leak_cancellations, a.leak_runners,
                                           tag=f"operator-leak{rep + 1}"))
            except Exception as exc:  # recorded and reported, and the run goes on
                results["leak_failed"] = repr(exc)[:1000]
                say(f"leak check FAILED: {exc!r}"[:400])
                break
            results["leak_runs"], results["leak"] = runs, leak.median_run(runs)
            report.write(results, out)  # each run's readings kept as soon as it ends
        report.write(results, out)  # a failure's, too
    if "neighbour" in a.scenarios and a.neighbour_reps:
        say(f"good neighbour: {a.neighbour_write_rate}/s pod writes, {a.neighbour_read_rate}/s reads beside "
            f"{a.neighbour_runners}-runner cancellations by {','.join(a.neighbour_approaches)}; budgets {a.budgets}")
        results["neighbour"] = await neighbour.run(
            h, cluster, runners=a.neighbour_runners, approaches=a.neighbour_approaches, budgets=a.budgets,
            reps=a.neighbour_reps, idle_seconds=a.neighbour_idle_seconds, write_rate=a.neighbour_write_rate,
            read_rate=a.neighbour_read_rate)
        for label, p in results["neighbour"]["phases"].items():
            say(f"  {label:<28} p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, errors {p['error_rate'] * 100:.2f} %")
        report.write(results, out)
    await kube.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report.summarise(results)
    results["goals"] = report.goals(results)
    report.write(results, out)
    return results
