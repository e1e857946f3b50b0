"""Operator settings, from environment variables (documented in docs/operations.md)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from necrocode.logtail import TAIL_KIB_MAX, TAIL_KIB_MIN
from necrocode.planning import RetryPolicy

T = TypeVar("T")

STEP_EVENTS = ("failures", "all")
"""NECROCODE_STEP_EVENTS' values (Settings.step_events)."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _ttl(value: str) -> int | None:
    """NECROCODE_DEFAULT_TTL_SECONDS: empty (or unset) for none, else whole seconds >= 0."""
    if not value.strip():
        return None
    ttl = int(value)
    if ttl < 0:
        raise ValueError(f"NECROCODE_DEFAULT_TTL_SECONDS={value!r}: expected seconds >= 0, or empty for none")
    return ttl


def _checked(name: str, default: str, parse: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> T:
    """A setting parsed and checked against its range: anything else refused at start, saying
    what is expected."""
    value = _env(name, default)
    try:
        parsed = parse(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected {expected}") from None
    if not ok(parsed):
        raise ValueError(f"{name}={value!r}: expected {expected}")
    return parsed


def _rate(name: str, default: str) -> float:
    """A requests-per-second setting: a finite number >= 0, 0 for no limit."""
    return _checked(name, default, float, lambda q: math.isfinite(q) and 0 <= q <= 100_000,
                    "requests per second >= 0 (0: no limit), at most 100000")


def _count(name: str, default: str, low: int, meaning: str) -> int:
    return _checked(name, default, int, lambda n: low <= n <= 10_000, f"{meaning}, {low} to 10000")


def _flag(name: str, default: str) -> bool:
    return _env(name, default).lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    concurrency: int = 50
    """API requests in flight at once, all cancellations together (also the connection pool
    size). With the five settings below, the operator's API budget (docs/operations.md)."""
    adaptive_concurrency: bool = True
    """Whether the in-flight limit follows the API server's latency, from 3 up to `concurrency`
    (policies.adaptive); false: always `concurrency`."""
    adaptive_tolerance: float = 0.25
    """How much slower than at 3 in flight the writes may be answered while the adaptive limit
    still grows (0.25: a quarter; set in percent, NECROCODE_ADAPTIVE_TOLERANCE_PERCENT); more
    gives a cancellation more of a busy API server and its other clients less
    (docs/benchmarks.md, session 21)."""
    api_qps: float = 0.0
    """API requests sent per second, all cancellations together, retries included, a watch
    counted when opened; 0: no limit (only `concurrency` bounds the rate)."""
    api_burst: int = 0
    """How many requests may go at once above api_qps after a quiet spell; 0: one second's worth."""
    cancellation_concurrency: int = 0
    """API requests in flight for one cancellation; 0: no limit of its own (`concurrency` bounds
    it). It also caps each step's parallel workers (concurrency.bounded)."""
    cancellation_qps: float = 0.0
    """API requests sent per second for one cancellation (burst: one second's worth); 0: no limit."""
    status_write_interval: float = 0.5
    """At most one status write per this many seconds per cancellation while work goes on."""
    status_write_rate: float = 5.0
    """Background status writes per second, all cancellations together (0: no limit): with many
    in flight each one's interval stretches to in-flight / rate (policies.status_writes), so a
    budget cut stopping a thousand jobs does not spend the API server on progress counts. The
    writes at a cancellation's start, before its first deletion and at its end are not delayed.
    5, not 20 as before: 100 cancellations of 50 runners at once took 1.45x the floor at 5 a
    second against 1.63x at 20 (docs/benchmarks.md, session 23); a single cancellation, or two,
    still writes every status_write_interval."""
    step_events: str = "failures"
    """Which steps get Events: "failures" (a step that failed; the cancellation's Started and
    final Events and the per-task ones always go), or "all" (a Started and an outcome Event for
    every step, the earlier default: two writes per step, the largest share of a small cancellation's
    writes; every step is in status either way)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """The one retry policy of every API call (429, 5xx, timeouts, resets; Retry-After honoured)
    and of every read-decide-write round that meets a 409 Conflict."""
    stuck_timeout: float = 30.0
    """After a force delete, how long a pod may linger (a finalizer) before it is an error."""
    request_timeout: float = 30.0
    status_list_limit: int = 100
    """Entries kept in each status list (affectedTasks, runnerOutcomes, cleanup lists); the
    progress counts stay exact and every AgentTask keeps its own cancellation record. Long
    lists make every status write of a big cancellation expensive for the API server."""
    task_events_limit: int = 100
    """Per-task Events for at most this many tasks of one cancellation (and RunnerForced Events
    for this many forced runners); beyond it one summary Event says how many more (as
    client-go's event spam filter would)."""
    event_qps: float = 10.0
    """Per-task and RunnerForced Events per second, all cancellations together (0: no limit).
    An Event the budget has no token for is not written, never waited for: the summary Event
    counts its task or runner, and the task's own status.cancellation records it either way.
    Like the kubelet's eventRecordQPS: a budget cut stopping a thousand jobs writes a few Events
    a second, not one per task and runner (about 8,000 in two minutes for 1,000 x 5)."""
    event_burst: int = 200
    """Per-task and RunnerForced Events written at once after a quiet spell: one cancellation's
    full share (task_events_limit of each) is never thinned by the rate alone."""
    shared_runner_watch: bool = True
    """Cancellations in one namespace follow their runners through one shared watch
    (runnerwatch.py); off: a watch each, as before (kept to measure the difference)."""
    coalesce_lists: bool = True
    """Lists asked while one of the same kind is in flight go out together as one request: one
    job's objects with other jobs' (`necrocode.io/job in (...)`), identical lists as one
    (listbatch.py); off: a request each, as before."""
    include_secrets: bool = False
    """Also delete Secrets labelled as the job's scratch (needs RBAC on secrets)."""
    requester_policy: bool = False
    """The requester admission policy (deploy/requester-policy.yaml) is installed: the
    necrocode.io/requester annotations are the API server's record of who asked and may be
    trusted for access decisions. Off: requesters are unverified claims and the operator does
    no optional destructive action for them (preserveArtifacts: false keeps the artifacts)."""
    default_ttl_seconds: int | None = None
    """How long a finished record whose spec has no ttlSecondsAfterFinished is kept before the
    operator deletes it, whoever created it (kubectl, the CLI, the REST API); None: kept for ever."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty means the whole cluster."""
    metrics_port: int = 8080
    preserve_logs: bool = False
    """Keep each runner's log tail when a cancellation's spec.preserveLogs is not set."""
    log_tail_kib: int = 64
    """How much of the end of each runner's log is kept (KiB, 1..512)."""
    log_read_timeout: float = 10.0
    """The longest one runner's log is waited for (retries included): a lost node's is not kept."""

    @classmethod
    def from_env(cls) -> Settings:
        ns = tuple(n.strip() for n in _env("NECROCODE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            concurrency=_count("NECROCODE_CONCURRENCY", "50", 1, "requests in flight"),
            adaptive_concurrency=_checked("NECROCODE_ADAPTIVE_CONCURRENCY", "true", str.lower,
                                          lambda v: v in ("true", "false"), "true or false") == "true",
            adaptive_tolerance=_checked("NECROCODE_ADAPTIVE_TOLERANCE_PERCENT", "25", int, lambda t: 5 <= t <= 400,
                                        "a percentage of the round trip at 3 in flight, 5 to 400") / 100,
            api_qps=_rate("NECROCODE_API_QPS", "0"),
            api_burst=_count("NECROCODE_API_BURST", "0", 0, "requests (0: one second's worth of NECROCODE_API_QPS)"),
            cancellation_concurrency=_count("NECROCODE_CANCELLATION_CONCURRENCY", "0", 0,
                                            "requests in flight per cancellation (0: no own limit)"),
            cancellation_qps=_rate("NECROCODE_CANCELLATION_QPS", "0"),
            status_write_interval=float(_env("NECROCODE_STATUS_WRITE_INTERVAL", "0.5")),
            status_write_rate=_checked("NECROCODE_STATUS_WRITE_RATE", "5", float,
                                       lambda q: math.isfinite(q) and 0 <= q <= 10_000,
                                       "status writes per second >= 0 (0: no limit), at most 10000"),
            step_events=_checked("NECROCODE_STEP_EVENTS", "failures", str.strip, lambda v: v in STEP_EVENTS,
                                 " or ".join(STEP_EVENTS)),
            retry=RetryPolicy(
                attempts=max(1, int(_env("NECROCODE_RETRY_ATTEMPTS", "5"))),
                base_seconds=float(_env("NECROCODE_RETRY_BASE_SECONDS", "0.5")),
                factor=float(_env("NECROCODE_RETRY_FACTOR", "2")),
                max_seconds=float(_env("NECROCODE_RETRY_MAX_SECONDS", "30")),
                conflict_attempts=max(1, int(_env("NECROCODE_RETRY_CONFLICT_ATTEMPTS", "10"))),
            ),
            stuck_timeout=float(_env("NECROCODE_STUCK_TIMEOUT_SECONDS", "30")),
            request_timeout=float(_env("NECROCODE_REQUEST_TIMEOUT_SECONDS", "30")),
            status_list_limit=max(1, int(_env("NECROCODE_STATUS_LIST_LIMIT", "100"))),
            task_events_limit=max(0, int(_env("NECROCODE_TASK_EVENTS_LIMIT", "100"))),
            event_qps=_rate("NECROCODE_EVENT_QPS", "10"),
            event_burst=_count("NECROCODE_EVENT_BURST", "200", 1, "Events at once after a quiet spell"),
            shared_runner_watch=_flag("NECROCODE_SHARED_RUNNER_WATCH", "true"),
            coalesce_lists=_flag("NECROCODE_COALESCE_LISTS", "true"),
            include_secrets=_flag("NECROCODE_INCLUDE_SECRETS", "false"),
            requester_policy=_flag("NECROCODE_REQUESTER_POLICY", "false"),
            default_ttl_seconds=_ttl(_env("NECROCODE_DEFAULT_TTL_SECONDS", "")),
            namespaces=ns,
            metrics_port=int(_env("NECROCODE_METRICS_PORT", "8080")),
            preserve_logs=_flag("NECROCODE_PRESERVE_LOGS", "false"),
            log_tail_kib=_checked("NECROCODE_LOG_TAIL_KIB", "64", int, lambda n: TAIL_KIB_MIN <= n <= TAIL_KIB_MAX,
                                  f"{TAIL_KIB_MIN} to {TAIL_KIB_MAX} KiB (a ConfigMap holds at most 1 MiB)"),
            log_read_timeout=_checked("NECROCODE_LOG_READ_TIMEOUT_SECONDS", "10", float, lambda s: 0 < s <= 300,
                                      "seconds above 0, at most 300"),  # nan is neither
        )
