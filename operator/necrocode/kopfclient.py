"""kopf's HTTP client with a bounded connection pool.

Why: kopf builds its aiohttp session with no limit on connections (TCPConnector(limit=0)), so
every request it has in flight opens a TLS connection of its own: 1,000 JobCancellations created
within a second make it open ~330 at once (a finalizer PATCH each, then its progress writes), and
each costs the API server a TLS handshake and the operator its TLS buffers and state, kept in the
pool afterwards. Bounded, the same requests queue for a connection instead (kopf's request
timeout still covers the wait), and the process keeps fewer.

How: the login handler hands kopf its own session (kopf.AiohttpSession, kopf's documented way
to bring one), built like kopf's own from the same ConnectionInfo (server, TLS, headers, proxy)
but with a limit. kopf closes it when the credentials are replaced (a re-login after a 401) or
at exit, as it does its own.

The limit must leave room for kopf's watch streams, each of which holds a connection for as long
as it is open: one per watched resource and namespace (cluster-wide: one per resource, plus the
scans of namespaces and CRDs). Where the namespaces are patterns their number is not known
beforehand, and the pool stays unbounded, as kopf ships it.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import kopf

WATCHED_RESOURCES = 2  # JobCancellation and TaskCancellation: every kopf handler watches one of them
SCAN_STREAMS = 2  # kopf's own watches of namespaces and CRDs, when its scanning is on
REQUEST_CONNECTIONS = 32
"""Connections for kopf's requests (finalizer and progress PATCHes, Event-free: posting is off),
beside its watch streams. Our own client (necrocode.kube.Kube) has its separate pool."""


def patterns(namespaces: Sequence[str]) -> bool:
    """Whether any of kopf's namespaces is a pattern (globs, negations, lists), whose matches
    are found at run time."""
    return any(c in n for n in namespaces for c in "!*?,")


def connection_limit(namespaces: Sequence[str], scanning: bool) -> int:
    """The size of kopf's pool for these namespaces (empty: the whole cluster); 0 (unbounded)
    when a namespace is a pattern."""
    if patterns(namespaces):
        return 0
    streams = WATCHED_RESOURCES * max(1, len(namespaces)) + (SCAN_STREAMS if scanning else 0)
    return streams + REQUEST_CONNECTIONS


def bounded_session(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """A session like kopf's own for `info`, with at most `limit` connections (0: unbounded).
    Call it inside the running event loop (aiohttp binds the session to it)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               priority=info.priority, expiration=info.expiration, aiohttp_session=session)
