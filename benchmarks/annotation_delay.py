"""`python -m benchmarks.annotation_delay [--samples N] [--settle S] [--out DIR]`: how long a downward-API
annotation takes to become visible inside a pod on a real kubelet, and whether the cancellation
signal (SignalRunners' PATCH of necrocode.io/cancel-requested) reaches a runner before the
SIGTERM of TerminateRunners' graceful DELETE when that DELETE follows at once (issue 19, item 4:
the PATCH is worth its API cost only if runners can read it).

It reuses a running real node (`python -m hack.realnode up`) and its control plane, else starts
both, as the realnode tests do (temporary state, tied to this process), and stops them at the end
with the host restored. Each sample is a fresh runner-like pod on the real node (busybox sh on
the runner image, the pod's annotations in a downward-API volume) that reads the annotations
file every ~20 ms with shell builtins only and notes, on CLOCK_BOOTTIME (/proc/uptime, 10 ms
steps: the same clock as this process's, the kernel is shared), when the annotation appears and
when SIGTERM arrives; after SIGTERM it keeps reading for --linger seconds (well inside the 30 s
grace), then reports both in its termination message. Modes, each over N sequential samples:

  patch-only      PATCH, then wait until the pod saw it (then delete): the delay alone (a);
  delete-at-once  PATCH, DELETE (grace 30 s) as soon as the PATCH is answered: the operator (b);
  delete-after-2s PATCH, 2 s, DELETE (c);
  delete-only     DELETE without a PATCH: when SIGTERM comes on its own (the baseline).

--settle S waits S seconds between the pod's Ready and the PATCH (a runner that has worked a
while: the kubelet is busy with a new pod for 1-2 s). Results: DIR/annotation-<UTC time>/
results.json (every sample) and table.md; `--pool RESULTS.json...` prints the table of several
runs' samples together. Findings: docs/benchmarks.md ("Does the signal reach a runner before its SIGTERM?").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import GRACE, REPO, Obj, machine, percentile, say
from hack import realnode
from hack.localcluster import LocalCluster, bin_dir
from tests.support.kube import Kubectl, wait_for

ANNOTATION = "necrocode.io/cancel-requested"  # operator/necrocode/model.py ANNOTATION_CANCEL_REQUESTED
IMAGE = "necrocode.local/runner:v1"  # hack/ociimage.py: busybox-static, imported by `realnode up`
KEEP = "necrocode.io/bench-keep-status"  # a finalizer: the terminated state stays readable
# mode -> seconds from the PATCH's answer to the DELETE (None: once the pod saw it; -1: no PATCH at all)
MODES: dict[str, float | None] = {"patch-only": None, "delete-at-once": 0.0, "delete-after-2s": 2.0, "delete-only": -1}
SEEN_TIMEOUT = 150  # patch-only: then delete anyway (the kubelet's periodic pod resync is 60-90 s)

# The probe. `read` from /proc/uptime and from the annotations file are builtins (no fork per
# poll); `sleep & wait` returns at once when the trapped SIGTERM arrives (as examples/runner/runner.sh).
PROBE = r"""
F=/etc/podinfo/annotations; seen=; term=; cs() { read -r up _ </proc/uptime; now=${up%.*}${up#*.}; }
on_term() { cs; term=$up; end=$((now + LINGER_CS)); echo "term $term"; }
trap on_term TERM
cs; echo "ready $up"
while :; do
  if [ -z "$seen" ]; then
    while IFS= read -r line || [ -n "$line" ]; do  # the file's last line has no newline
      case $line in "$KEY="*) cs; seen=$up; echo "seen $seen"; break;; esac
    done <"$F"
  fi
  if [ -n "$term" ]; then cs; [ -n "$seen" ] || [ "$now" -ge "$end" ] && break; fi
  sleep 0.02 & wait $!
done
printf 'seen=%s term=%s' "${seen:-none}" "$term" >/dev/termination-log
"""


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def probe_pod(name: str, node: str, linger: float) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"necrocode.io/role": "runner"}, "finalizers": [KEEP]},
        "spec": {
            "nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": GRACE,
            "automountServiceAccountToken": False,
            "tolerations": [{"key": realnode.TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "probe", "image": IMAGE, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", PROBE],
                "env": [{"name": "KEY", "value": ANNOTATION}, {"name": "LINGER_CS", "value": str(int(linger * 100))}],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}],
            }],
            "volumes": [{"name": "podinfo", "downwardAPI": {"items": [
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}],
        },
    }


def log_of(kube: Kubectl, ns: str, name: str) -> str:
    return str(kube.core.read_namespaced_pod_log(name, ns, _request_timeout=10))


def pod_ready(kube: Kubectl, ns: str, name: str) -> bool:
    pod: Any = kube.core.read_namespaced_pod(name, ns)
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def terminated(kube: Kubectl, ns: str, name: str) -> Any:
    pod: Any = kube.core.read_namespaced_pod(name, ns)
    statuses = pod.status.container_statuses or []
    return statuses[0].state.terminated if statuses and statuses[0].state.terminated else None


def sample(kube: Kubectl, ns: str, node: str, mode: str, linger: float, settle: float) -> Obj:
    """One fresh pod, one signal, one delete. Times in seconds; the pod's are its /proc/uptime
    (10 ms steps, truncated: +5 ms puts them at the middle of their step)."""
    name = f"probe-{uuid.uuid4().hex[:6]}"
    core: Any = kube.core  # its methods take our dict bodies
    after = MODES[mode]
    core.create_namespaced_pod(ns, probe_pod(name, node, linger if after != -1 else 0))
    # polling, and the kubelet has reported the pod Ready (its start-up syncs are behind it, as for
    # a runner that has worked a while)
    wait_for(lambda: "ready" in log_of(kube, ns, name) and pod_ready(kube, ns, name), timeout=60, interval=0.1,
             what=f"{name} polling and Ready")
    time.sleep(settle)  # a measured parameter: a runner that has run a while, not one just started
    t_patch_sent = boottime()
    if after != -1:
        core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {ANNOTATION: f'{{"by": "{mode}"}}'}}})
    t_patch = boottime()
    if after is None:
        with contextlib.suppress(AssertionError):  # not seen in time: the sample says so
            wait_for(lambda: "seen" in log_of(kube, ns, name), timeout=SEEN_TIMEOUT, interval=0.1,
                     what=f"{name} seeing it")
    elif after > 0:
        time.sleep(after)  # the measured schedule itself, not a wait for a condition
    t_delete_sent = boottime()
    kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=GRACE)
    t_delete = boottime()
    state = wait_for(lambda: terminated(kube, ns, name), timeout=GRACE + 30, interval=0.1, what=f"{name} ended")
    kube.core.patch_namespaced_pod(name, ns, {"metadata": {"finalizers": None}})
    wait_for(lambda: not kube.core.list_namespaced_pod(ns, field_selector=f"metadata.name={name}").items,
             timeout=60, what=f"{name} gone")
    report = dict(f.split("=", 1) for f in (state.message or "").split())
    seen = float(report["seen"]) + 0.005 if report.get("seen", "none") != "none" else None
    term = float(report["term"]) + 0.005 if report.get("term") else None
    return {
        "mode": mode, "pod": name, "exit_code": state.exit_code,
        "patch_rtt": t_patch - t_patch_sent if after != -1 else None, "delete_rtt": t_delete - t_delete_sent,
        "delete_after_patch": t_delete_sent - t_patch,
        "seen_after_patch": None if seen is None else seen - t_patch,
        "sigterm_after_delete": None if term is None else term - t_delete,
        "sigterm_minus_seen": None if seen is None or term is None else term - seen,
    }


def stats(xs: list[float]) -> Obj:
    """min, p50, p90, max (nearest rank) in seconds, rounded to the probe's resolution."""
    if not xs:
        return {"n": 0}
    return {"n": len(xs), **{k: round(v, 3) for k, v in (
        ("min", min(xs)), ("p50", percentile(xs, 50)), ("p90", percentile(xs, 90)), ("max", max(xs)))
        if v is not None}}


TIE = 0.03  # the probe's resolution (10 ms clock steps, one 20 ms poll): closer than this is "together"
ORDERS = ("seen first", "together", "SIGTERM first", "never seen")


def order(s: Obj) -> str:
    """Which came first in the pod: the annotation or SIGTERM ("never seen": not within the linger)."""
    gap = s["sigterm_minus_seen"]
    if s["seen_after_patch"] is None or gap is None:
        return "never seen" if s["seen_after_patch"] is None else "seen first"
    return "seen first" if gap > TIE else ("SIGTERM first" if gap < -TIE else "together")


def summarize(samples: list[Obj]) -> Obj:
    out: Obj = {}
    for mode in MODES:
        ss = [s for s in samples if s["mode"] == mode]
        if not ss:
            continue

        def col(key: str, rows: list[Obj] = ss) -> list[float]:
            return [s[key] for s in rows if s[key] is not None]
        out[mode] = {
            "samples": len(ss),
            "order": {o: sum(order(s) == o for s in ss) for o in ORDERS} if MODES[mode] != -1 else None,
            "seen_after_patch": stats(col("seen_after_patch")),
            "sigterm_after_delete": stats(col("sigterm_after_delete")),
            "sigterm_minus_seen": stats(col("sigterm_minus_seen")),
            "patch_rtt": stats(col("patch_rtt")), "delete_rtt": stats(col("delete_rtt")),
        }
    return out


def table(summary: Obj) -> str:
    def f(st: Obj) -> str:
        return "-" if not st.get("n") else f"{st['p50']:.2f} / {st['p90']:.2f} / {st['max']:.2f} (n={st['n']})"
    rows = [f"| mode | in the pod: {', '.join(ORDERS)} (together: within {TIE:g} s) | PATCH -> seen "
            "(p50 / p90 / max, s) | DELETE -> SIGTERM | SIGTERM - seen |", "| --- | ---: | ---: | ---: | ---: |"]
    for mode, s in summary.items():
        seen = "no PATCH" if s["order"] is None else " / ".join(str(s["order"][o]) for o in ORDERS)
        rows.append(f"| {mode} | {seen} | {f(s['seen_after_patch'])} | {f(s['sigterm_after_delete'])} "
                    f"| {f(s['sigterm_minus_seen'])} |")
    return "\n".join(rows) + "\n"


@contextlib.contextmanager
def node_and_cluster() -> Iterator[tuple[Kubectl, str]]:
    """A running real node (hack.realnode's default state) and its control plane, else both
    started here in temporary dirs, tied to this process, and stopped at the end (`down`
    restores the host and says what differs)."""
    running = realnode.RealNode()
    if running.running() and running.cluster_dir is not None:
        say(f"reusing the running real node {running.name} ({running.cluster_dir})")
        yield Kubectl(running.cluster_dir / "kubeconfig"), running.name
        return
    gaps = realnode.missing(None) + realnode.conflicts()
    if gaps:
        raise SystemExit("cannot start a real node:\n  - " + "\n  - ".join(gaps))
    cdir = Path(tempfile.mkdtemp(prefix="necrocode-bench-cluster-"))
    ndir = Path(tempfile.mkdtemp(prefix="necrocode-bench-realnode-"))
    bins = bin_dir()
    cluster = LocalCluster(dir=cdir, nodes=1, tie_to_parent=True, bins=bins)
    node = realnode.RealNode(state_dir=ndir, cluster_dir=cdir, bins=bins, tie_to_parent=True)
    try:
        say("starting a local control plane and the real node")
        kubeconfig = cluster.up()
        yield Kubectl(kubeconfig), node.up()
    finally:
        diffs = node.down()
        cluster.down()
        shutil.rmtree(cdir, ignore_errors=True)
        if diffs:
            raise SystemExit(f"the real node left the host changed (state kept in {ndir}):\n" + "\n".join(diffs))
        shutil.rmtree(ndir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.annotation_delay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20, help="samples per mode (sequential)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"a subset of {','.join(MODES)}")
    ap.add_argument("--linger", type=float, default=5.0,
                    help="seconds the probe keeps reading after SIGTERM for an annotation not seen yet")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between the pod's Ready and the PATCH (the kubelet is busy with a new pod for 1-2 s)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--pool", type=Path, nargs="+", metavar="RESULTS_JSON",
                    help="measure nothing: print the table of these runs' samples together")
    a = ap.parse_args(argv)
    if a.pool:
        print(table(summarize([s for f in a.pool for s in json.loads(f.read_text())["samples"]])), end="")
        return 0
    modes = [m for m in a.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}")
    out = a.out / f"annotation-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    out.mkdir(parents=True)

    def interrupted(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)  # SIGTERM tears down like Ctrl-C
    samples: list[Obj] = []
    info = machine()
    with node_and_cluster() as (kube, node):
        ns = f"annotation-delay-{uuid.uuid4().hex[:6]}"
        kube.create_namespace(ns)
        try:
            for i in range(a.samples):
                for mode in modes:  # interleaved: a drift of the machine's load touches every mode alike
                    samples.append(sample(kube, ns, node, mode, a.linger, a.settle))
                    say(f"{i + 1}/{a.samples} {mode}: {json.dumps({k: v for k, v in samples[-1].items() if k != 'pod'})}")
        finally:
            left: Any = kube.core.list_namespaced_pod(ns).items  # an interrupted sample's pod
            for p in left:
                with contextlib.suppress(Exception):
                    kube.core.patch_namespaced_pod(p.metadata.name, ns, {"metadata": {"finalizers": None}})
            kube.delete_namespace(ns)
    summary = summarize(samples)
    info["loadavg_at_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(
        {"machine": info, "grace_seconds": GRACE, "linger_seconds": a.linger, "settle_seconds": a.settle, "summary": summary,
         "samples": samples}, indent=1))
    (out / "table.md").write_text(table(summary))
    print(table(summary) + f"\n{out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
