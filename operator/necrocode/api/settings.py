"""The REST API's settings: environment variables (NECROCODE_API_*, docs/api.md), which the
command line's flags override (`server.parse_settings`)."""

import os
from dataclasses import dataclass

from necrocode.api.limits import MAX_BODY_DEFAULT


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, "true" if default else "false").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> tuple[str, ...]:
    """A comma-separated list; empty entries dropped."""
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


@dataclass(frozen=True)
class ApiSettings:
    host: str = "0.0.0.0"
    port: int = 8000
    namespace: str = "default"
    """Namespace of requests that name none (`?namespace=`)."""
    allow_anonymous: bool = False
    """Serve callers without a token as system:anonymous (still subject to RBAC)."""
    token_cache_seconds: float = 10.0
    token_cache_size: int = 1024
    max_body_bytes: int = MAX_BODY_DEFAULT
    """Larger request bodies are answered 413 before authentication, unread."""
    audiences: tuple[str, ...] = ()
    """TokenReview audiences; a token must have been issued for one of them (empty: the API
    server's own audiences)."""
    auth_failure_burst: int = 10
    auth_failure_per_second: float = 1.0
    """Per client IP: this many failed authentications at once, then this many per second; more is 429."""
    auth_failure_clients: int = 10000
    """At most this many clients are tracked (least recently seen dropped first)."""
    rejected_cache_seconds: float = 60.0
    rejected_cache_size: int = 4096
    """A rejected token (by hash) is answered 401 without a TokenReview for this long."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    """Serve HTTPS with this certificate chain and key (PEM); re-read when they change."""
    tls_reload_seconds: float = 60.0
    poll_seconds: float = 0.5
    """How often `?wait=true` reads the cancellation."""
    request_timeout: float = 30.0
    concurrency: int = 50
    kubeconfig: str | None = None
    log_format: str = "json"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> "ApiSettings":
        e = os.environ.get
        return cls(
            host=e("NECROCODE_API_HOST", "0.0.0.0"),
            port=int(e("NECROCODE_API_PORT", "8000")),
            namespace=e("NECROCODE_API_NAMESPACE", "default"),
            allow_anonymous=_env_bool("NECROCODE_API_ALLOW_ANONYMOUS", False),
            token_cache_seconds=float(e("NECROCODE_API_TOKEN_CACHE_SECONDS", "10")),
            token_cache_size=int(e("NECROCODE_API_TOKEN_CACHE_SIZE", "1024")),
            max_body_bytes=int(e("NECROCODE_API_MAX_BODY_BYTES", str(MAX_BODY_DEFAULT))),
            audiences=_env_list("NECROCODE_API_AUDIENCES"),
            auth_failure_burst=int(e("NECROCODE_API_AUTH_FAILURE_BURST", "10")),
            auth_failure_per_second=float(e("NECROCODE_API_AUTH_FAILURE_PER_SECOND", "1")),
            auth_failure_clients=int(e("NECROCODE_API_AUTH_FAILURE_CLIENTS", "10000")),
            rejected_cache_seconds=float(e("NECROCODE_API_REJECTED_CACHE_SECONDS", "60")),
            rejected_cache_size=int(e("NECROCODE_API_REJECTED_CACHE_SIZE", "4096")),
            tls_cert_file=e("NECROCODE_API_TLS_CERT_FILE") or None,
            tls_key_file=e("NECROCODE_API_TLS_KEY_FILE") or None,
            tls_reload_seconds=float(e("NECROCODE_API_TLS_RELOAD_SECONDS", "60")),
            poll_seconds=float(e("NECROCODE_API_POLL_SECONDS", "0.5")),
            request_timeout=float(e("NECROCODE_REQUEST_TIMEOUT_SECONDS", "30")),
            concurrency=int(e("NECROCODE_CONCURRENCY", "50")),
            kubeconfig=e("NECROCODE_KUBECONFIG") or None,
            log_format=e("NECROCODE_LOG_FORMAT", "json"),
            log_level=e("NECROCODE_LOG_LEVEL", "INFO"),
        )
