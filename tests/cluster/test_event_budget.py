"""Per-task Events under their two limits (docs/operations.md, NECROCODE_TASK_EVENTS_LIMIT and
the Event budget): at most TASK_EVENTS_LIMIT tasks of one cancellation get an Event of their
own, all cancellations together spend one operator-wide budget of them, and the job's
TasksChanged Event counts every task left without one, saying why. Each task records its
cancellation in its status whatever the Events. Against the real API server: the Events are
listed from it, the skipped ones counted from the operator's /metrics."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.kube import ClusterInfo, Kubectl, wait_for
from tests.support.metrics import scrape
from tests.support.operators import alive, evidence, run_operator

TASKS = 6
LIMIT = 3
BURST = 5
QPS = 0.01
"""One token a hundred seconds: the test takes a few, so the burst is all it can spend (the
bounds below still allow what a slow machine's refill adds)."""


def skipped(port: int) -> float:
    return scrape(port).get(("necrocode_events_skipped_total", ()), 0.0)


def cancel_and_wait(kube: Kubectl, ns: str, job: str, op: object, log: Path, **spec: int) -> None:
    kube.cancel_job(ns, f"stop-{job}", job, **spec)

    def done() -> bool:
        alive(op, log)  # type: ignore[arg-type]
        return ((kube.get("jobcancellations", ns, f"stop-{job}").get("status") or {}).get("phase")
                in ("Completed", "PartiallyCompleted", "Failed"))

    try:
        wait_for(done, timeout=60, what=f"the cancellation of {job}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{evidence(log)}") from None
    assert kube.get("jobcancellations", ns, f"stop-{job}")["status"]["phase"] == "Completed", evidence(log)


def task_events(kube: Kubectl, ns: str, job: str) -> list[str]:
    """The tasks of `job` with a Cancelled Event of their own, by name."""
    return sorted(e.involved_object.name for e in kube.core.list_namespaced_event(ns).items
                  if e.involved_object.kind == "AgentTask" and e.involved_object.name.startswith(f"{job}-")
                  and e.reason == "Cancelled")


def summary(kube: Kubectl, ns: str, name: str, reason: str = "TasksChanged") -> str:
    found = [e.message for e in kube.events_for(ns, name) if e.reason == reason]
    assert len(found) == 1, found
    return str(found[0])


def test_task_events_keep_to_the_per_cancellation_limit_and_the_operators_budget(
        kube: Kubectl, cluster: ClusterInfo, solo_namespace: str, tmp_path: Path) -> None:
    from hack.localcluster import free_port

    ns, log, port = solo_namespace, tmp_path / "operator.log", free_port()
    for job in ("a", "b"):
        kube.create_job(ns, job)
        for i in range(TASKS):
            kube.create_task(ns, job, f"t{i}", "Pending")
    kube.create_job(ns, "c")  # two runners on a lost node: forced once grace + escalation ran out
    for i in range(2):
        kube.create_runner(ns, "c", f"t{i}", stop="never", grace=1)
        kube.create_task(ns, "c", f"t{i}", "Running", runner=f"c-t{i}-runner")
    started = time.monotonic()
    with run_operator(cluster, ns, log, NECROCODE_METRICS_PORT=str(port), NECROCODE_TASK_EVENTS_LIMIT=str(LIMIT),
                      NECROCODE_EVENT_QPS=str(QPS), NECROCODE_EVENT_BURST=str(BURST)) as op:
        # a: the per-cancellation limit, with the budget's burst to spare; by name, so a
        # resumed step would pick the same tasks
        cancel_and_wait(kube, ns, "a", op, log)
        assert task_events(kube, ns, "a") == ["a-t0", "a-t1", "a-t2"]
        text = summary(kube, ns, "a")
        assert text.startswith(f"{TASKS - LIMIT} Cancelled by "), text
        assert (f"besides the {LIMIT} with an Event of their own (at most {LIMIT} per cancellation and the "
                f"operator's Event budget of {QPS:g}/s;") in text, text
        assert "kubectl get agenttasks -l necrocode.io/job=a" in text, text
        # b: what a left of the shared budget (two tokens, and what refilled since: none
        # unless the machine took a hundred seconds)
        cancel_and_wait(kube, ns, "b", op, log)
        refilled = int(QPS * (time.monotonic() - started))
        written = task_events(kube, ns, "b")
        assert BURST - LIMIT <= len(written) <= min(LIMIT, BURST - LIMIT + refilled), written
        assert written == [f"b-t{i}" for i in range(len(written))]
        text = summary(kube, ns, "b")
        assert text.startswith(f"{TASKS - len(written)} Cancelled by "), text
        assert f"besides the {len(written)} with an Event of their own" in text, text
        # c: the forced runners' Events draw on the same budget, and their summary counts
        # those left without one
        cancel_and_wait(kube, ns, "c", op, log, gracePeriodSeconds=1, escalateAfterSeconds=1)
        assert kube.pods(ns, "necrocode.io/job=c") == []
        refilled = int(QPS * (time.monotonic() - started))
        forced = [e for e in kube.events_for(ns, "stop-c") if e.reason == "RunnerForced"]
        c_tasks = task_events(kube, ns, "c")
        written_all = LIMIT + len(written) + len(forced) + len(c_tasks)
        assert written_all <= BURST + refilled, (written, forced, c_tasks)
        if len(forced) < 2:
            text = summary(kube, ns, "stop-c", "RunnersForced")
            assert text.startswith(f"{2 - len(forced)} more runner pod(s) force-deleted besides the {len(forced)} "
                                   "with an Event of their own (at most"), text
        # the refusals, and only they, are counted: every Event asked within the limit (a's
        # three, b's three, c's two runners and two tasks) that found no token
        asked = LIMIT + LIMIT + 2 + 2
        wait_for(lambda: skipped(port) == asked - written_all, timeout=10,
                 what=f"necrocode_events_skipped_total == {asked - written_all}")
    # every task records its cancellation itself, Event or not
    for job, n in (("a", TASKS), ("b", TASKS), ("c", 2)):
        for i in range(n):
            st = kube.get("agenttasks", ns, f"{job}-t{i}")["status"]
            assert st["state"] == "Cancelled" and st.get("cancellation"), (job, i, st)
