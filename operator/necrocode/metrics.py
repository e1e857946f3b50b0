"""Every Prometheus metric of the operator, in one place (names follow Prometheus conventions).

Label values: kind = JobCancellation | TaskCancellation; result = a terminal phase
(Completed, PartiallyCompleted, Failed, Rejected); mode = graceful | forced;
step = a step name; resource = lease | configmap | persistentvolumeclaim | secret.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

import necrocode
from necrocode.model import JOB_CANCELLATION, TASK_CANCELLATION

REQUESTS = Counter("necrocode_cancellation_requests_total",
                   "Cancellations that reached a final phase, by kind and result.", ["kind", "result"])
DURATION = Histogram(
    "necrocode_cancellation_duration_seconds", "Time from a cancellation's start to its final phase.",
    ["kind"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
)
FAILURES = Counter("necrocode_cancellation_failures_total", "Steps that ended Failed, by kind and step.",
                   ["kind", "step"])
RUNNERS_TERMINATED = Counter("necrocode_runners_terminated_total",
                             "Runner pods gone, by how they went.", ["mode"])
TERMINATION_TIMEOUTS = Counter("necrocode_termination_timeouts_total",
                               "Runner pods still present after force deletion (stuck).")
CLEANUP_FAILURES = Counter("necrocode_cleanup_failures_total",
                           "Cleanup operations that failed after all retries, by resource.", ["resource"])
IN_PROGRESS = Gauge("necrocode_cancellations_in_progress", "Cancellations being worked on now.", ["kind"])
STEP_DURATION = Histogram(
    "necrocode_cancellation_step_duration_seconds", "Duration of each step.", ["kind", "step"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
API_REQUESTS = Counter("necrocode_api_requests_total",
                       "Kubernetes API requests the operator's own client made (kopf's are not counted), by verb "
                       "and resource (with its subresource: pods, pods/log, jobcancellations/status, events).",
                       ["verb", "resource"])
API_BUDGET_WAIT = Counter("necrocode_api_budget_wait_seconds_total",
                          "Seconds the operator's requests waited for the API budget (an in-flight slot or a "
                          "token of the rate), by scope: global (all cancellations together) or cancellation "
                          "(each one's own).", ["scope"])
API_CONCURRENCY_LIMIT = Gauge("necrocode_api_concurrency_limit",
                              "Requests the operator's own client may have in flight now, all cancellations "
                              "together: NECROCODE_CONCURRENCY, or less while the adaptive limit "
                              "(NECROCODE_ADAPTIVE_CONCURRENCY) finds the API server answering slower with more.")
API_MIN_RTT = Gauge("necrocode_api_min_rtt_seconds",
                    "The round trip the adaptive in-flight limit judges by: the least of the last 5 minutes' "
                    "measurements of the operator's writes at 3 in flight (0 while it is first measured, or "
                    "with a fixed limit).")
EVENT_LOOP_LAG = Gauge("necrocode_event_loop_lag_seconds",
                       "The most a short timer of the operator's event loop ran late in the last second: how long "
                       "an answer that had arrived could wait before the operator read it.")
GC_PAUSE = Histogram("necrocode_gc_pause_seconds",
                     "How long each of Python's garbage collections stopped the operator (its event loop "
                     "with it), by generation (2: a full collection; necrocode.gctuning).", ["generation"],
                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
EVENTS_SKIPPED = Counter("necrocode_events_skipped_total",
                         "Per-task and RunnerForced Events not written because the operator's Event budget "
                         "(NECROCODE_EVENT_QPS, NECROCODE_EVENT_BURST) had no token; each cancellation's summary "
                         "Event counts them, and every task records its cancellation in its status.")
KOPF_MEMORIES = Gauge("necrocode_kopf_memories", "Objects kopf keeps a memory of in this operator: the cancellation "
                      "records it still has work for (a finished record's goes once its daemon has; "
                      "necrocode.kopfmemory).")
LEADER = Gauge("necrocode_leader", "1 while this replica holds the leader Lease and acts, 0 while it stands by "
               "(without leader election: 1 while the operator runs).")


def _version(dist: str, fallback: str = "unknown") -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return fallback


BUILD_INFO = Gauge("necrocode_build_info", "Always 1; the labels say what runs: the operator's version, Python's "
                   "and kopf's.", ["version", "python", "kopf"])
BUILD_INFO.labels(version=necrocode.__version__, python=platform.python_version(), kopf=_version("kopf")).set(1)


class OldestRunning:
    """necrocode_oldest_running_cancellation_age_seconds{kind}: how long ago the oldest
    cancellation this process is running started (status.startedAt, so a cancellation resumed
    after a restart or a leader change counts from its first start), computed at scrape time;
    0 when none runs (a standby, or an operator not started). `source` (set by the operator at
    startup) yields (kind, age in seconds) for each cancellation at work."""

    name = "necrocode_oldest_running_cancellation_age_seconds"

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[str, float]]] | None = None

    def ages(self) -> dict[str, float]:
        out = {JOB_CANCELLATION: 0.0, TASK_CANCELLATION: 0.0}
        source = self.source
        for kind, age in source() if source is not None else ():
            out[kind] = max(out.get(kind, 0.0), age)
        return out

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, "Age of the oldest cancellation still running, by kind (from its "
                                              "status.startedAt; 0 when none runs here).", labels=["kind"])
        for kind, age in sorted(self.ages().items()):
            family.add_metric([kind], age)
        yield family


OLDEST_RUNNING = OldestRunning()
REGISTRY.register(OLDEST_RUNNING)
