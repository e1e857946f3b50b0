"""Every Prometheus metric of the operator, in one place (names follow Prometheus conventions).

Label values: kind = JobCancellation | TaskCancellation; result = a terminal phase
(Completed, PartiallyCompleted, Failed, Rejected); mode = graceful | forced;
step = a step name; resource = lease | configmap | persistentvolumeclaim | secret.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
                       "Kubernetes API requests the operator's own client made (kopf's are not counted), by verb.",
                       ["verb"])
