"""Operator settings, from environment variables (documented in docs/operations.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from necrocode.planning import RetryPolicy


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


@dataclass(frozen=True)
class Settings:
    concurrency: int = 50
    """API requests in flight at once (also the connection pool size)."""
    status_write_interval: float = 0.5
    """At most one status write per this many seconds per cancellation while work goes on."""
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

    @classmethod
    def from_env(cls) -> Settings:
        ns = tuple(n.strip() for n in _env("NECROCODE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            concurrency=int(_env("NECROCODE_CONCURRENCY", "50")),
            status_write_interval=float(_env("NECROCODE_STATUS_WRITE_INTERVAL", "0.5")),
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
            include_secrets=_env("NECROCODE_INCLUDE_SECRETS", "false").lower() in ("1", "true", "yes"),
            requester_policy=_env("NECROCODE_REQUESTER_POLICY", "false").lower() in ("1", "true", "yes"),
            default_ttl_seconds=_ttl(_env("NECROCODE_DEFAULT_TTL_SECONDS", "")),
            namespaces=ns,
            metrics_port=int(_env("NECROCODE_METRICS_PORT", "8080")),
        )
