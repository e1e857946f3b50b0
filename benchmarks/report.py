"""What a run reports: the medians and ratios of each size (summarise), the goals against them,
results.json and table.md in the output directory (the tables docs/benchmarks.md shows), and the
plots cancel-time.png and (the good neighbour) neighbour.png; scalereport holds the parts of
the many-at-once, neighbour and leak scenarios."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import scalereport
from benchmarks.approaches import APPROACHES
from benchmarks.common import Obj, median


def summarise(results: Obj) -> None:
    scalereport.summarise(results)
    for n, per in results["sizes"].items():
        for name, a in per.items():
            secs = [r["seconds"] for r in a["runs"]]
            if not secs:
                continue
            a["median_seconds"] = median(secs)
            a["min_seconds"], a["max_seconds"] = min(secs), max(secs)
            if name == "ours":
                a["median_api_calls"] = median([r["api_calls_total"] for r in a["runs"]])
        raws = [per[k]["median_seconds"] for k in ("raw-delete", "raw-collection") if per.get(k, {}).get("median_seconds")]
        if raws:
            per_limit = min(raws)
            results["raw_limit"][n] = per_limit
            if "median_seconds" in per.get("ours", {}):
                per["ours"]["ratio_to_raw_limit"] = round(per["ours"]["median_seconds"] / per_limit, 2)
        for floor, ratio in (("floor", "ratio_to_floor"), ("floor-budgeted", "ratio_to_floor_budgeted")):
            if "median_seconds" in per.get("ours", {}) and "median_seconds" in per.get(floor, {}):
                per["ours"][ratio] = round(per["ours"]["median_seconds"] / per[floor]["median_seconds"], 2)


def table(results: Obj) -> str:
    sizes = list(results["sizes"])
    lines = ["| approach | " + " | ".join(f"N = {int(n):,}" for n in sizes) + " |",
             "| --- | " + " | ".join("---:" for _ in sizes) + " |"]
    for name, approach in APPROACHES.items():
        cells = []
        for n in sizes:
            a = results["sizes"][n].get(name)
            if not a or "median_seconds" not in a:
                cells.append("-")
                continue
            c = f"{a['median_seconds']:.2f} s"
            if name == "ours" and "ratio_to_raw_limit" in a:
                c += f" ({a['ratio_to_raw_limit']:.2f}x raw limit, {int(a['median_api_calls']):,} calls)"
            if name == "ours" and "ratio_to_floor" in a:
                c += f" ({a['ratio_to_floor']:.2f}x floor)"
            if name == "ours" and "ratio_to_floor_budgeted" in a:
                c += f" ({a['ratio_to_floor_budgeted']:.2f}x floor under its budget)"
            cells.append(c)
        lines.append(f"| {approach.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: Obj, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted(int(n) for n in results["sizes"])
    for name, approach in APPROACHES.items():
        xs, ys, lo, hi = [], [], [], []
        for n in sizes:
            a = results["sizes"][str(n)].get(name)
            if a and "median_seconds" in a:
                xs.append(n)
                ys.append(a["median_seconds"])
                lo.append(a["median_seconds"] - a["min_seconds"])
                hi.append(a["max_seconds"] - a["median_seconds"])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=approach.label,
                        linewidth=2.5 if name == "ours" else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("runner pods (N)")
    ax.set_ylabel("seconds until every pod is gone (median, min-max)")
    ax.set_title("Cancelling N runner pods, local control plane + kwok")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def goals(results: Obj) -> Obj:
    g: Obj = {}
    for n in ("1000", "5000"):
        o = results["sizes"].get(n, {}).get("ours", {})
        if "ratio_to_raw_limit" in o:
            g[f"within_1.3x_raw_limit_N{n}"] = {"ratio": o["ratio_to_raw_limit"], "met": o["ratio_to_raw_limit"] <= 1.3}
    for n, per in results["sizes"].items():
        if "median_seconds" in per.get("ours", {}):
            others = {k: per[k]["median_seconds"] for k in ("kubectl", "job-controller") if "median_seconds" in per.get(k, {})}
            g[f"faster_than_kubectl_and_job_controller_N{n}"] = {
                "met": all(per["ours"]["median_seconds"] < v for v in others.values()), **others,
                "ours": per["ours"]["median_seconds"]}
    for n, per in results["sizes"].items():  # the bound: what the promised writes alone cost
        fl = per.get("floor", {}).get("median_seconds")
        if fl:
            b: Obj = {"floor": fl}
            if "median_seconds" in per.get("ours", {}):
                b["ours_to_floor"] = round(per["ours"]["median_seconds"] / fl, 2)
            if results["raw_limit"].get(n):
                b["floor_to_raw_limit"] = round(fl / results["raw_limit"][n], 2)
            if "median_seconds" in per.get("job-controller", {}):
                b["floor_to_job_controller"] = round(fl / per["job-controller"]["median_seconds"], 2)
            if "ours_to_floor" in b:  # issue 19, item 3: no regression from the reliability work
                g[f"within_1.1x_floor_N{n}"] = {"ratio": b["ours_to_floor"], "met": b["ours_to_floor"] <= 1.1}
            g[f"floor_bound_N{n}"] = b
        if "ratio_to_floor_budgeted" in per.get("ours", {}):  # beside item 3's goal, not instead of it
            r = per["ours"]["ratio_to_floor_budgeted"]
            g[f"within_1.1x_floor_under_the_budget_N{n}"] = {"ratio": r, "met": r <= 1.1}
    if "reaction" in results:
        p99 = results["reaction"]["p99_seconds"]
        g["reaction_p99_under_200ms"] = {"p99_seconds": p99, "met": p99 < 0.2}
        g["reaction_p99_under_150ms"] = {"p99_seconds": p99, "met": p99 < 0.15}  # issue 19, item 3
    if "rss" in results:
        g["rss_under_150MB"] = {"peak_rss_mib": results["rss"]["peak_rss_mib"],
                                "met": results["rss"]["peak_rss_mib"] * 1.048576 < 150}
    return {**g, **scalereport.goals(results)}


def write(results: Obj, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False))
    text = (table(results) if results["sizes"] else "") + scalereport.tables(results)
    if text:
        (out / "table.md").write_text(text)


def plots(results: Obj, out: Path) -> list[Path]:
    """Every plot the run has figures for; the paths written."""
    made = []
    if results["sizes"]:
        plot(results, out / "cancel-time.png")
        made.append(out / "cancel-time.png")
    if (results.get("neighbour") or {}).get("cancellation_seconds"):
        scalereport.plot_neighbour(results, out / "neighbour.png")
        made.append(out / "neighbour.png")
    return made
