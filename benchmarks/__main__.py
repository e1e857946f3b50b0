"""`python -m benchmarks`: the command line (flags as documented in docs/benchmarks.md); starts
the run's own control plane, runs the suite, writes the plot and, with --publish, copies the
results to docs/benchmarks/."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import benchmarks
from benchmarks import many, neighbour, report, scalereport, suite
from benchmarks.approaches import APPROACHES
from benchmarks.cluster import control_plane, install_crds
from benchmarks.common import NODES, REPO, say
from hack.localcluster import CACHE

SCENARIOS = ("sizes", "costs", "reaction", "many", "rss", "leak", "neighbour")
"""--scenario: what a run measures (by default all), in the order suite.run makes them."""


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=benchmarks.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000", help="runner pods per job (comma-separated)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each approach at each size (median)")
    ap.add_argument("--approaches", default=",".join(APPROACHES), help=f"subset of {','.join(APPROACHES)}")
    ap.add_argument("--reaction-reps", type=int, default=30, help="TaskCancellations for reaction latency (0: skip)")
    ap.add_argument("--scenario", "--scenarios", dest="scenarios", default=",".join(SCENARIOS),
                    help=f"which measurements to make, a subset of {','.join(SCENARIOS)} (the counts below still "
                         "apply: 0 skips one)")
    ap.add_argument("--many-reps", "--concurrent-reps", dest="many_reps", type=int, default=3,
                    help="repetitions of each many-at-once shape, ours and the floor (0: skip)")
    ap.add_argument("--many-shapes", default="100x50,1000x5",
                    help="many at once: JOBSxRUNNERS, comma-separated (JobCancellations of RUNNERS runners each)")
    ap.add_argument("--many-contract", action=argparse.BooleanOptionalAction, default=True,
                    help="many at once: also the contract's floor (the requests created and each cancellation's own "
                         "promised writes by a bare client, the operator stopped meanwhile)")
    ap.add_argument("--many-budgeted-floor", action=argparse.BooleanOptionalAction, default=True,
                    help="many at once: also the floor under the operator's API budget (its settings from the "
                         "environment, as the operator reads them)")
    ap.add_argument("--many-budgeted-contract", action=argparse.BooleanOptionalAction, default=True,
                    help="many at once: also the contract's floor under the operator's API budget (the requests "
                         "still created unbudgeted, as ours' are)")
    ap.add_argument("--many-create-concurrency", type=int, default=50,
                    help="clients creating the many JobCancellations at once (the spread is recorded)")
    ap.add_argument("--neighbour-reps", type=int, default=3, help="repetitions of the good-neighbour run (0: skip)")
    ap.add_argument("--neighbour-runners", type=int, default=5000, help="runners cancelled beside the neighbour load")
    ap.add_argument("--neighbour-approaches", default="ours,floor,job-controller,kubectl",
                    help="approaches run beside the load (kubectl at 5,000: ~17 min a repetition)")
    ap.add_argument("--budgets", default="unlimited;qps=200,burst=400;qps=50,burst=100",
                    help="the operator's API budgets ours runs under beside the load, ';'-separated: 'unlimited' "
                         "or KEY=VALUE,... with KEY one of qps, burst, concurrency, cancellation_concurrency, "
                         "cancellation_qps (NECROCODE_API_QPS ...) or a NECROCODE_* name")
    ap.add_argument("--neighbour-idle-seconds", type=float, default=30, help="the load alone, before each repetition")
    ap.add_argument("--neighbour-write-rate", type=float, default=10, help="neighbour pods created (and deleted) a second")
    ap.add_argument("--neighbour-read-rate", type=float, default=40, help="neighbour reads a second")
    ap.add_argument("--leak-cancellations", type=int, default=500, help="sequential cancellations of the leak check (0: skip)")
    ap.add_argument("--leak-runners", type=int, default=2, help="runners per job in the leak check")
    ap.add_argument("--leak-reps", type=int, default=3,
                    help="leak checks, each with a fresh operator (the median one by RSS growth is reported)")
    ap.add_argument("--rss-pods", type=int, default=10_000, help="unrelated pods for the RSS run (0: skip)")
    ap.add_argument("--kubectl-max-n", type=int, default=1000,
                    help="run kubectl only up to this N (it deletes and waits one pod at a time: ~0.2 s a pod here)")
    ap.add_argument("--raw-delete-max-n", type=int, default=1_000_000,
                    help="skip raw-delete above this N (it takes as long as the DELETE collection; "
                         "at 5,000 it was 4 %% faster, so the published raw limit measures both)")
    ap.add_argument("--raw-concurrency", type=int, default=100, help="requests in flight for raw-delete")
    ap.add_argument("--apiserver-pprof", type=int, default=0, metavar="SECONDS",
                    help="save the API server's CPU profile over the first SECONDS of each timed window "
                         "(ours, floor, job-controller) as <out>/<approach>-<N>-rep<i>.pprof")
    ap.add_argument("--write-costs", type=int, default=0,
                    help="also measure the CPU cost of each kind of API call a cancellation makes (n of each)")
    ap.add_argument("--profile", action="store_true", help="run the operator under py-spy (speedscope output)")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results/<time>)")
    ap.add_argument("--publish", action="store_true", help="also copy results.json and the plot to docs/benchmarks/")
    ap.add_argument("--cluster-dir", type=Path, default=CACHE / "bench-cluster")
    ap.add_argument("--kubectl", type=Path, default=CACHE / "bin" / "kubectl")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    a.approaches = [s for s in a.approaches.split(",") if s]
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.neighbour_approaches = [s for s in a.neighbour_approaches.split(",") if s]
    unknown = set(a.approaches + a.neighbour_approaches) - set(APPROACHES)
    if unknown:
        ap.error(f"unknown approaches: {', '.join(sorted(unknown))}")
    if set(a.scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenarios: {', '.join(sorted(set(a.scenarios) - set(SCENARIOS)))}")
    try:
        many.parse_shapes(a.many_shapes)
        neighbour.parse_budgets(a.budgets)
    except ValueError as exc:
        ap.error(f"--many-shapes or --budgets: {exc}")
    if a.cluster_dir.resolve() == (CACHE / "cluster").resolve():
        ap.error("refusing to use the shared development cluster; pick another --cluster-dir")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        ap.error("matplotlib is missing: hack/venv.sh bench (make bench runs it)")
    if a.profile and not (Path(sys.executable).parent / "py-spy").exists():
        ap.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = a.out or REPO / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    say(f"starting a local control plane in {a.cluster_dir} ({NODES} kwok nodes) ...")
    cluster = control_plane(a.cluster_dir, profiling=a.apiserver_pprof > 0)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        kubeconfig = cluster.up()
        install_crds(kubeconfig)
        say(f"control plane up in {time.monotonic() - started:.0f}s; results in {out}")
        results = asyncio.run(suite.run(a, out, cluster, kubeconfig))
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    finally:
        cluster.down()
    made = report.plots(results, out)
    say(f"done in {time.monotonic() - started:.0f}s\n" + (report.table(results) if results["sizes"] else "")
        + scalereport.tables(results))
    say("goals: " + json.dumps(results["goals"], indent=1))
    if a.publish:
        dest = REPO / "docs" / "benchmarks"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "results.json", dest / "results.json")
        for png in made:
            shutil.copy(png, dest / png.name)
        say(f"published to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
