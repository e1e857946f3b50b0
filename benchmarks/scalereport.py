"""The report of issue 19's scenarios (report.py calls it): many at once against the floor,
the good neighbour's latency per phase and the trade-off plot of our budgets, the leak check;
their medians, goals and tables."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.common import Obj, median

RSS_GOAL_MIB = 300
FLOOR_GOAL = 1.3  # ours within 1.3x the floor
NEIGHBOUR_GOAL = 2.0  # neighbours' p99 within 2x idle
LEAK_GOAL = 0.10
"""Growth under 10 %: of RSS as a fraction; of TCP connections, counted whole, at most
floor(10 % of them), and one more at any count (keep-alive pools open one more at times)."""


FLOORS = (("floor", "ratio_to_floor", "floor"), ("contract", "ratio_to_contract_floor", "contract_floor"),
          ("floor-budgeted", "ratio_to_floor_budgeted", "floor_under_the_budget"),
          ("contract-budgeted", "ratio_to_contract_floor_budgeted", "contract_floor_under_the_budget"))
"""The floors ours is compared with at each many-at-once shape: (approach, ratio key, goal key's
tail). The issue's goal is against the first; the contract's floor and both floors under the
operator's budget are reported beside it, not instead of it."""


def summarise(results: Obj) -> None:
    """Medians of each many-at-once shape and ours' ratio to each floor."""
    for shape in (results.get("many") or {}).values():
        for name in ("ours", *(f for f, _, _ in FLOORS)):
            a = shape.get(name)
            if a and a["runs"]:
                a["median_seconds"] = median([r["seconds"] for r in a["runs"]])
                a["median_api_calls_per_runner"] = median([r["api_calls_per_runner"] for r in a["runs"]])
        o = shape.get("ours", {})
        for name, ratio, _ in FLOORS:
            f = shape.get(name, {})
            if o.get("median_seconds") and f.get("median_seconds"):
                shape[ratio] = round(o["median_seconds"] / f["median_seconds"], 2)


def goals(results: Obj) -> Obj:
    g: Obj = {}
    for key, shape in (results.get("many") or {}).items():
        o = shape.get("ours") or {"runs": [], "failed_runs": []}
        g[f"many_{key}_all_terminal_every_runner_gone"] = {
            "runs": len(o["runs"]), "failed": len(o["failed_runs"]), "met": bool(o["runs"]) and not o["failed_runs"]}
        peaks = [r["operator_peak_rss_mib"] for r in o["runs"] if r.get("operator_peak_rss_mib")]
        if peaks:
            g[f"many_{key}_operator_peak_rss_under_{RSS_GOAL_MIB}MiB"] = {"peak_rss_mib": max(peaks),
                                                                         "met": max(peaks) < RSS_GOAL_MIB}
        for _, ratio, tail in FLOORS:
            if ratio in shape:
                g[f"many_{key}_within_{FLOOR_GOAL}x_{tail}"] = {"ratio": shape[ratio], "met": shape[ratio] <= FLOOR_GOAL}
    nb = results.get("neighbour")
    if nb:
        idle = (nb["phases"].get("idle") or {}).get("p99_ms")
        floor = (nb["cancellation_seconds"].get("floor") or {}).get("median")
        for label in nb["cancellation_seconds"]:
            if not label.startswith("ours"):
                continue
            p99 = (nb["phases"].get(label) or {}).get("p99_ms")
            secs = nb["cancellation_seconds"][label]["median"]
            b: Obj = {"neighbours_p99_ms": p99, "idle_p99_ms": idle, "ours_seconds": secs, "floor_seconds": floor}
            b["p99_within_2x_idle"] = p99 is not None and idle is not None and p99 <= NEIGHBOUR_GOAL * idle
            b["within_1.3x_floor"] = floor is not None and secs is not None and secs <= FLOOR_GOAL * floor
            b["met"] = b["p99_within_2x_idle"] and b["within_1.3x_floor"]
            g[f"neighbour_{label}"] = b
    if "leak_failed" in results:
        g["leak_growth_under_10pct"] = {"failed": results["leak_failed"], "met": False}
    lk = results.get("leak")
    if lk:
        b, a = lk["before"], lk["after"]

        def within(x: Obj, base: Obj = b) -> bool:
            """RSS against `base`, connections always against the first reading: one taken right
            after a removal can find kopf's idle connections closed (seen: 9 -> 4 -> 9)."""
            return bool(base["rss_mib"]) and x["rss_mib"] <= base["rss_mib"] * (1 + LEAK_GOAL) \
                and x["tcp"] - b["tcp"] <= max(1, math.floor(b["tcp"] * LEAK_GOAL))

        g["leak_growth_under_10pct"] = {
            "rss_mib": [b["rss_mib"], a["rss_mib"]], "tcp": [b["tcp"], a["tcp"]], "met": within(a)}
        if lk.get("records_removed"):  # what stays once the finished records are gone
            r = lk["records_removed"]
            g["leak_growth_under_10pct_records_removed"] = {
                "rss_mib": [b["rss_mib"], r["rss_mib"]], "tcp": [b["tcp"], r["tcp"]], "met": within(r)}
        if lk.get("second_round_removed") and lk.get("records_removed"):  # a leak adds again in round 2
            r1, r2 = lk["records_removed"], lk["second_round_removed"]
            g["leak_second_round_adds_under_10pct"] = {
                "rss_mib": [r1["rss_mib"], r2["rss_mib"]], "tcp": [b["tcp"], r2["tcp"]], "met": within(r2, r1)}
    return g


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def tables(results: Obj) -> str:
    """The markdown of the sections docs/benchmarks.md shows for these scenarios."""
    parts: list[str] = []
    many = results.get("many") or {}
    if many:
        lines = ["### Many at once", "",
                 "| jobs x runners | ours | floor | ours / floor | contract floor | ours / contract floor "
                 "| floor under the budget | ours / it | contract floor under the budget | ours / it "
                 "| created within | API calls / runner (ours, floor, contract floor) "
                 "| operator CPU | operator peak RSS | runs (failed) |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s in many.values():
            o, f = s.get("ours") or {"runs": [], "failed_runs": []}, s.get("floor") or {}
            c, b, cb = s.get("contract") or {}, s.get("floor-budgeted") or {}, s.get("contract-budgeted") or {}
            runs = o["runs"]
            cpu = median([r["operator_cpu_seconds"] for r in runs if r.get("operator_cpu_seconds") is not None])
            lines.append(
                f"| {s['jobs']:,} x {s['runners_per_job']} | {_f(o.get('median_seconds'), '{:.2f} s')} "
                f"| {_f(f.get('median_seconds'), '{:.2f} s')} | {_f(s.get('ratio_to_floor'), '{:.2f}x')} "
                f"| {_f(c.get('median_seconds'), '{:.2f} s')} | {_f(s.get('ratio_to_contract_floor'), '{:.2f}x')} "
                f"| {_f(b.get('median_seconds'), '{:.2f} s')} | {_f(s.get('ratio_to_floor_budgeted'), '{:.2f}x')} "
                f"| {_f(cb.get('median_seconds'), '{:.2f} s')} "
                f"| {_f(s.get('ratio_to_contract_floor_budgeted'), '{:.2f}x')} "
                f"| {_f(median([r['creation_spread_seconds'] for r in runs]), '{:.2f} s')} "
                f"| {_f(o.get('median_api_calls_per_runner'))}, {_f(f.get('median_api_calls_per_runner'))}, "
                f"{_f(c.get('median_api_calls_per_runner'))} "
                f"| {_f(cpu, '{:.1f} s')} "
                f"| {_f(max((r['operator_peak_rss_mib'] for r in runs), default=None), '{:.0f} MiB')} "
                f"| {len(runs)} ({len(o['failed_runs'])}) |")
        parts.append("\n".join(lines))
    nb = results.get("neighbour")
    if nb:
        idle = (nb["phases"].get("idle") or {}).get("p99_ms")
        lines = ["### Good neighbour", "",
                 f"{nb['write_rate_per_second']:g} pods created and deleted and {nb['read_rate_per_second']:g} reads "
                 f"a second in another namespace; {nb['runners']:,} runners cancelled.", "",
                 "| phase | cancellation | neighbours' p50 | p99 | p99 / idle | errors | requests |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, p in nb["phases"].items():
            secs = (nb["cancellation_seconds"].get(label) or {}).get("median")
            ratio = p["p99_ms"] / idle if idle and p.get("p99_ms") is not None else None
            lines.append(f"| {label} | {_f(secs, '{:.2f} s')} | {_f(p['p50_ms'], '{:.0f} ms')} "
                         f"| {_f(p['p99_ms'], '{:.0f} ms')} | {_f(ratio, '{:.2f}x')} "
                         f"| {p['error_rate'] * 100:.2f} % | {p['requests']:,} |")
        parts.append("\n".join(lines))
    lk = results.get("leak")
    if lk:
        lines = ["### Leak check", "",
                 f"{lk['cancellations']} sequential cancellations of {lk['runners_per_job']} runners "
                 f"(after {lk['warmup']} to warm up).", "",
                 "| reading | RSS (MiB) | growth | TCP connections | established | sockets | open fds |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        b0 = lk["before"].get("rss_mib")
        for key, label in (("before", "before (after the warm-up)"), ("after", "after them (records kept)"),
                           ("records_removed", "their records removed"),
                           ("second_round", "after as many more (records kept)"),
                           ("second_round_removed", "those records removed")):
            r = lk.get(key)
            if not r:
                continue
            g = (r["rss_mib"] / b0 - 1) * 100 if b0 and r.get("rss_mib") is not None else None
            lines.append(f"| {label} | {_f(r.get('rss_mib'), '{:g}')} | {_f(g, '{:+.1f} %')} | {_f(r.get('tcp'), '{:g}')} "
                         f"| {_f(r.get('tcp_established'), '{:g}')} | {_f(r.get('sockets'), '{:g}')} "
                         f"| {_f(r.get('fds'), '{:g}')} |")
        if lk.get("kib_per_record_kept") is not None:
            lines += ["", f"{lk['kib_per_record_kept']} KiB of RSS per finished record kept."]
        if lk.get("of_runs"):
            lines += ["", "The median of " + str(len(lk["of_runs"])) + " runs by RSS growth; each run's: "
                      + ", ".join(_f(x * 100 if x is not None else None, "{:+.1f} %") for x in lk["of_runs"]) + "."]
        if lk.get("curve"):
            lines += ["", "RSS after each batch (cancellations made: MiB): "
                      + ", ".join(f"{c['made']}: {_f(c.get('rss_mib'), '{:g}')}" for c in lk["curve"]) + "."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else ""


def plot_neighbour(results: Obj, path: Path) -> None:
    """The trade-off: our cancellation time (x) against the neighbours' p99 (y) for each budget,
    the other approaches as points, the floor and idle as reference lines and the goal's box."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = results["neighbour"]
    secs = {k: v["median"] for k, v in nb["cancellation_seconds"].items() if v.get("median") is not None}
    p99 = {k: v["p99_ms"] for k, v in nb["phases"].items() if v.get("p99_ms") is not None}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ours = sorted((secs[k], p99[k], k) for k in secs if k.startswith("ours") and k in p99)
    if ours:
        ax.plot([x for x, _, _ in ours], [y for _, y, _ in ours], "o-", linewidth=2.5, label="necrocode-cancel, per budget")
        for x, y, k in ours:
            ax.annotate(k.removeprefix("ours ").strip("[]"), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    for k in secs:
        if not k.startswith("ours") and k in p99:
            ax.plot([secs[k]], [p99[k]], "s", label=k)
    idle = p99.get("idle")
    if idle is not None:
        ax.axhline(idle, color="grey", linewidth=1, label=f"idle p99 ({idle:.0f} ms)")
        ax.axhline(NEIGHBOUR_GOAL * idle, color="grey", linestyle="--", linewidth=1, label="goal: 2x idle p99")
    if "floor" in secs:
        ax.axvline(secs["floor"], color="black", linewidth=1, label=f"floor ({secs['floor']:.1f} s)")
        ax.axvline(FLOOR_GOAL * secs["floor"], color="black", linestyle="--", linewidth=1, label="goal: 1.3x floor")
    ax.set_xlabel(f"seconds to cancel {nb['runners']:,} runners (median)")
    ax.set_ylabel("neighbours' p99 latency during it (ms)")
    ax.set_title("What a big cancellation costs the neighbours")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
