"""A small asyncio client for the Kubernetes API, and the one error tree mapped at its boundary.

Why not the official client: it is synchronous (it would block kopf's event loop or need a
thread pool) and it turns every pod into a model object, which is slow for thousands of pods.
This client speaks JSON dicts over one aiohttp connection pool, sized to the operator's
concurrency; credentials come from the official client's kubeconfig/in-cluster loader. Every
request passes the operator's API budget first (necrocode.budget): the client's own, and the
budget of the cancellation it is made for, if any.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from necrocode.budget import CURRENT, Budget
from necrocode.listbatch import ListCoalescer
from necrocode.logtail import TailBuffer
from necrocode.model import FIELD_MANAGER, GROUP, VERSION
from necrocode.planning import RetryPolicy
from necrocode.policies.adaptive import Gradient

Obj = dict[str, Any]
T = TypeVar("T")
# metadata only (with the full object as a fallback for servers that cannot convert)
META_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
META_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
STREAM_CONCURRENCY = 50
"""Pod log reads in flight at once, per client (Kube.read_tail's lane): the log reads' bound
before they had a lane of their own, when they shared the pool of NECROCODE_CONCURRENCY (50)."""


# ----------------------------------------------------------------------------- errors
class ApiError(Exception):
    """Any non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message
        self.body = dict(body or {})
        self.retry_after = retry_after
        """Seconds the server asked us to wait (Retry-After header or details.retryAfterSeconds)."""
        self.attempts = 1
        """How many times the call was tried before this answer was final (set by Kube.request)."""


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class AlreadyExists(Conflict):
    pass


class Forbidden(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Invalid(ApiError):
    pass


class Gone(ApiError):
    """410: a watch's resourceVersion is too old; list again."""


class TransientError(ApiError):
    """429, 5xx and connection failures: worth retrying."""


class NotLeader(ApiError):
    """Refused before it was sent: this replica is not (or no longer surely) the leader, so it
    must not write (leader fencing, see necrocode.leader)."""


def map_error(status: int, body: Mapping[str, Any], retry_after: str | None = None) -> ApiError:
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or body)
    wait = _seconds(retry_after)
    if wait is None:
        details = body.get("details")
        wait = _seconds((details or {}).get("retryAfterSeconds") if isinstance(details, Mapping) else None)
    cls: type[ApiError]
    if status == 404:
        cls = NotFound
    elif status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status == 403:
        cls = Forbidden
    elif status == 401:
        cls = Unauthorized
    elif status == 410:
        cls = Gone
    elif status in (400, 422):
        cls = Invalid
    elif status == 429 or status >= 500:
        cls = TransientError
    else:
        cls = ApiError
    return cls(status, reason, message, body, retry_after=wait)


def _seconds(value: Any) -> float | None:
    """A Retry-After value in seconds (the HTTP-date form is not used by the API server)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out >= 0 else None


# ----------------------------------------------------------------------------- paths
def core_path(ns: str | None, plural: str, name: str | None = None, sub: str | None = None) -> str:
    p = "/api/v1" + (f"/namespaces/{ns}" if ns else "") + f"/{plural}"
    return _tail(p, name, sub)


def group_path(group: str, version: str, ns: str | None, plural: str, name: str | None = None,
               sub: str | None = None) -> str:
    p = f"/apis/{group}/{version}" + (f"/namespaces/{ns}" if ns else "") + f"/{plural}"
    return _tail(p, name, sub)


def nc_path(ns: str | None, plural: str, name: str | None = None, sub: str | None = None) -> str:
    return group_path(GROUP, VERSION, ns, plural, name, sub)


def lease_path(ns: str, name: str | None = None) -> str:
    return group_path("coordination.k8s.io", "v1", ns, "leases", name)


def _tail(p: str, name: str | None, sub: str | None) -> str:
    if name:
        p += "/" + quote(name, safe="")
    if sub:
        p += "/" + sub
    return p


# ----------------------------------------------------------------------------- config
@dataclass
class Credentials:
    host: str
    ssl: ssl.SSLContext | bool
    configuration: k8s_client.Configuration

    def headers(self) -> dict[str, str]:
        """The bearer token, if any (refreshed by the client library's hook when it expires).
        The library files it under "BearerToken" (older versions: "authorization")."""
        cfg = self.configuration
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        return {"Authorization": token} if token else {}


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """Kubeconfig (explicit path, $KUBECONFIG or ~/.kube/config) or the in-cluster ServiceAccount."""
    cfg = k8s_client.Configuration()
    # read $KUBECONFIG now: the client library reads it once, at import time
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg)
    except (k8s_config.ConfigException, FileNotFoundError, TypeError):
        if kubeconfig:
            raise
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx: ssl.SSLContext | bool
    if cfg.verify_ssl:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Credentials(host=cfg.host.rstrip("/"), ssl=ctx, configuration=cfg)


def resource_of(path: str) -> str:
    """The resource a request's path names, with its subresource: "pods", "pods/log",
    "jobcancellations/status", "namespaces" (the label of necrocode_api_requests_total: a few
    dozen values at most, whatever the names). Paths: /api/v1/[namespaces/NS/]RES[/NAME[/SUB]]
    and /apis/GROUP/VERSION/[namespaces/NS/]RES[/NAME[/SUB]]."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return "-"
    return f"{rest[0]}/{rest[2]}" if len(rest) > 2 else rest[0]


# ----------------------------------------------------------------------------- client
class Kube:
    """JSON over HTTP to the API server, with at most `concurrency` requests in flight and, if
    `qps` is above 0, at most `qps` sent per second (bursts of `burst`). Pod log reads go in a
    lane of their own, at most `stream_concurrency` at once (see read_tail)."""

    guard: ClassVar[Callable[[], None] | None] = None
    """Called before every request that writes (not GET); raises NotLeader to refuse it. Set by
    leader election: a replica that cannot prove its lease is still valid must not act."""

    on_request: ClassVar[Callable[[str, str], None] | None] = None
    """Called with the verb and the resource (resource_of) of every request (the operator counts
    them in necrocode_api_requests_total; set at startup, as kube may not import metrics)."""

    def __init__(self, creds: Credentials, concurrency: int = 50, timeout: float = 30.0,
                 extra_headers: Mapping[str, str] | None = None, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random, qps: float = 0.0, burst: int = 0,
                 stream_concurrency: int = STREAM_CONCURRENCY, adaptive: bool = False,
                 tolerance: float = Gradient.tolerance):
        self.creds = creds
        self.concurrency = concurrency
        self.budget = Budget("global", qps=qps, burst=burst, concurrency=concurrency,
                             gradient=Gradient(high=concurrency, tolerance=tolerance) if adaptive else None)
        """The whole client's budget (the pool holds as many connections as it has slots at
        most). `adaptive`: its in-flight limit follows the writes' round trips (policies.adaptive),
        growing while they are answered within `tolerance` of the round trip at its low limit."""
        self.streams = Budget("streams", concurrency=stream_concurrency)
        """The log reads' lane: their in-flight slots (their own pool holds as many connections);
        they still take a token of each rate."""
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._sleep, self._jitter = sleep, jitter
        self.lists: ListCoalescer | None = None
        """Set by coalesce_lists."""
        self.fenced = True
        """Whether Kube.guard applies to this client (the leader elector's own client is not
        fenced: it must be able to renew the lease that lifts the fence)."""
        self.extra_headers = dict(extra_headers or {})
        self.calls: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._stream_session: aiohttp.ClientSession | None = None

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=self.creds.ssl),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session(self.concurrency)
        return self._session

    @property
    def stream_session(self) -> aiohttp.ClientSession:
        if self._stream_session is None or self._stream_session.closed:
            self._stream_session = self._new_session(self.streams.concurrency)
        return self._stream_session

    async def close(self) -> None:
        for s in (self._session, self._watch_session, self._stream_session):
            if s is not None and not s.closed:
                await s.close()

    async def _admit(self, hold: bool = True) -> Budget | None:
        """Wait for the budgets one request must pass before it is sent: the cancellation's
        first (its slot, then its rate), then the client's, so a cancellation waiting on its
        own rate holds none of the slots the others share. Every attempt passes them (a retry
        is a request too); `hold`: keep in-flight slots until _leave (a watch holds none: it
        counts once, when opened). Returns the cancellation's budget, for _leave."""
        own = CURRENT.get()
        if own is not None:
            await own.acquire(hold)
        try:
            await self.budget.acquire(hold)
        except BaseException:
            if own is not None and hold:
                own.release()
            raise
        return own

    def _leave(self, own: Budget | None) -> None:
        self.budget.release()
        if own is not None:
            own.release()

    def _count(self, verb: str, path: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        if Kube.on_request is not None:
            Kube.on_request(verb, resource_of(path))

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json", meta_only: bool = False,
                      accept: str | None = None) -> Obj:
        """`meta_only`: the API server answers with the object's metadata only (PartialObjectMetadata),
        which costs it and us less to encode, send and parse when the rest is not needed."""
        headers = {"Accept": accept or (META_ONLY if meta_only else "application/json"), **self.creds.headers(),
                   **self.extra_headers}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        q = _query(params)
        # Every verb is retried: our writes are safe to repeat (PUTs and guarded PATCHes carry a
        # resourceVersion, deletes a uid precondition and 404 is done, creates answer 409
        # AlreadyExists, merge patches and server-side applies converge), so an answer lost on
        # the way back costs one more request, never a second effect.
        return await self._retrying(lambda: self._once(method, path, q, data, headers))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call` again after a TransientError, as the retry policy says (the one retry loop)."""
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return await call()
            except TransientError as exc:
                exc.attempts = attempt
                if attempt == policy.attempts:
                    raise
                await self._sleep(policy.delay(attempt, self._jitter(), exc.retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def reconnect_pause(self, breaks: int, exc: BaseException | None = None) -> float:
        """The pause before a watch that broke `breaks` times in a row is opened again: the
        retry policy's backoff (with its jitter, and a server's Retry-After), growing no further
        than its last attempt's. A watch is opened again for as long as its owner wants it (a
        terminator until its runners are gone, the shared runner watch while it has
        subscribers), so the number of reopenings is bounded by the owner, not here."""
        attempt = min(max(breaks, 1), self.retry.attempts)
        return self.retry.delay(attempt, self._jitter(), getattr(exc, "retry_after", None))

    async def read_tail(self, path: str, limit: int, *, params: Mapping[str, Any] | None = None) -> TailBuffer:
        """GET a body that is not JSON (a pod's log) and keep only its last `limit` bytes, read
        chunk by chunk: whatever the body's size, no more than `limit` plus one chunk is held.
        Retried as every request is (each attempt starts a new buffer); the caller bounds the
        whole read in time (a log can stream for as long as its kubelet sends it).

        Why a lane of its own (`streams`, with its own connections): the API server proxies a log
        read to the pod's kubelet and counts it as long-running (as a watch; priority and
        fairness leave it out too), and a read from a lost node's kubelet lasts until its
        timeout. In the short requests' slots, a few such reads would stop every cancellation's
        deletes and writes meanwhile, more so the fewer slots there are."""
        headers = {"Accept": "*/*", **self.creds.headers(), **self.extra_headers}
        q = _query(params)

        async def once() -> TailBuffer:
            await self._admit(hold=False)  # a token of each rate, none of the short requests' slots
            await self.streams.acquire()
            self._count("GET", path)
            tail = TailBuffer(limit)
            try:
                async with self.stream_session.get(
                    self.creds.host + path, params=q, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                ) as resp:
                    if resp.status >= 400:
                        raise await _answer_error(resp)
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        tail.feed(chunk)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise TransientError(0, "ConnectionError", f"{type(exc).__name__}: {exc}") from exc
            finally:
                self.streams.release()
            return tail

        return await self._retrying(once)

    async def conflict_retry(self, round_: Callable[[], Awaitable[T]]) -> T:
        """Run a read-decide-write round again while it ends in 409 Conflict (the object changed
        between our read and our write), at most retry.conflict_attempts times, with a short
        jittered pause; then the Conflict is the answer. Every conflict loop goes through here."""
        policy = self.retry
        for attempt in range(1, policy.conflict_attempts + 1):
            try:
                return await round_()
            except AlreadyExists:
                raise
            except Conflict as exc:
                exc.attempts = attempt
                if attempt == policy.conflict_attempts:
                    raise
                await self._sleep(0.05 * self._jitter())
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, method: str, path: str, q: Mapping[str, str], data: bytes | None,
                    headers: Mapping[str, str]) -> Obj:
        own = await self._admit()
        epoch, sent = self.budget.epoch, asyncio.get_running_loop().time()
        answered = False
        try:
            out = await self._send(method, path, q, data, headers)
            answered = True
            return out
        except ApiError as exc:
            # a 404 or 409 is a round trip like any other; a 429 or 5xx is often answered at once
            # because the server is overloaded, so its speed says nothing of how busy it is
            answered = 400 <= exc.status < 500 and exc.status != 429
            raise
        finally:
            self._leave(own)
            if answered and method != "GET":  # writes, one object each: the adaptive limit's measure
                self.budget.observe(asyncio.get_running_loop().time() - sent, epoch)

    async def _send(self, method: str, path: str, q: Mapping[str, str], data: bytes | None,
                    headers: Mapping[str, str]) -> Obj:
        # the fence is checked after the wait for the budget, right before the request goes
        if method != "GET" and self.fenced and Kube.guard is not None:
            Kube.guard()
        self._count(method, path)
        try:
            # the timeout covers the server's answer, not the wait for one of our own pooled
            # connections: under a hundred concurrent cancellations that wait is ours, not a fault
            async with self.session.request(
                method, self.creds.host + path, params=q, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.timeout,
                                              sock_read=self.timeout),
            ) as resp:
                raw = await resp.read()
                try:
                    payload: Obj = orjson.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    if resp.status < 400:
                        raise
                    payload = {"message": raw[:512].decode(errors="replace")}  # a proxy's error page
                if not isinstance(payload, dict):
                    raise TransientError(0, "BadResponse", f"expected a JSON object, got {type(payload).__name__}")
                if resp.status >= 400:
                    raise map_error(resp.status, payload, resp.headers.get("Retry-After"))
                return payload
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # OSError: resets, refusals, unreachable
            raise TransientError(0, "ConnectionError", f"{type(exc).__name__}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise TransientError(0, "BadResponse", str(exc)) from exc

    # ---- verbs
    async def get(self, path: str) -> Obj:
        return await self.request("GET", path)

    async def list_page(self, path: str, *, label_selector: str | None = None, field_selector: str | None = None,
                        limit: int | None = None, continue_: str | None = None, meta_only: bool = False) -> Obj:
        return await self.request("GET", path, params={
            "labelSelector": label_selector, "fieldSelector": field_selector,
            "limit": limit, "continue": continue_,
        }, accept=META_ONLY_LIST if meta_only else None)

    def coalesce_lists(self) -> ListCoalescer:
        """From now on, lists asked together go as one request (necrocode.listbatch): for the
        operator's client, where hundreds of cancellations may list at once; not for a client
        acting for one requester."""
        self.lists = ListCoalescer(lambda path, sel, fields, meta, page: self._list_pages(
            path, label_selector=sel, field_selector=fields, meta_only=meta, page=page))
        return self.lists

    async def list_all(self, path: str, *, label_selector: str | None = None,
                       field_selector: str | None = None, page: int = 500,
                       meta_only: bool = False) -> tuple[list[Obj], str]:
        """All items across pages, and the list's resourceVersion (to start a watch from)."""
        if self.lists is not None:
            return await self.lists.fetch(path, label_selector, field_selector, meta_only, page)
        return await self._list_pages(path, label_selector=label_selector, field_selector=field_selector, page=page,
                                      meta_only=meta_only)

    async def _list_pages(self, path: str, *, label_selector: str | None = None, field_selector: str | None = None,
                          page: int = 500, meta_only: bool = False) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        cont: str | None = None
        rv = ""
        while True:
            out = await self.list_page(path, label_selector=label_selector, field_selector=field_selector,
                                       limit=page, continue_=cont, meta_only=meta_only)
            items.extend(out.get("items") or [])
            meta = out.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            cont = meta.get("continue")
            if not cont:
                return items, rv

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body, params={"fieldManager": FIELD_MANAGER})

    async def merge_patch(self, path: str, body: Obj, *, meta_only: bool = False) -> Obj:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json",
                                  params={"fieldManager": FIELD_MANAGER}, meta_only=meta_only)

    async def json_patch(self, path: str, ops: list[Obj]) -> Obj:
        return await self.request("PATCH", path, body=ops, content_type="application/json-patch+json",
                                  params={"fieldManager": FIELD_MANAGER})

    async def delete(self, path: str, *, grace_period_seconds: int | None = None,
                     uid: str | None = None, propagation: str | None = "Background",
                     meta_only: bool = False) -> Obj | None:
        """Delete; None when the object was already gone (404 on delete is success)."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if uid:
            body["preconditions"] = {"uid": uid}
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            return await self.request("DELETE", path, body=body, meta_only=meta_only)
        except NotFound:
            return None
        except Conflict as exc:
            if uid and "UID" in exc.message:  # precondition failed: a new object took the name
                return None
            raise

    async def watch(self, path: str, *, label_selector: str | None = None, resource_version: str = "",
                    timeout_seconds: int = 290, meta_only: bool = False) -> AsyncIterator[Obj]:
        """Watch events as dicts {type, object}; raises Gone when the resourceVersion expired."""
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = self._new_session(0)
        params = {"watch": "1", "labelSelector": label_selector, "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": timeout_seconds}
        headers = {"Accept": META_ONLY if meta_only else "application/json", **self.creds.headers(),
                   **self.extra_headers}
        await self._admit(hold=False)  # a token of each rate, no slot (nothing to give back)
        self._count("WATCH", path)
        try:
            async with self._watch_session.get(
                self.creds.host + path, params=_query(params),
                headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30),
            ) as resp:
                if resp.status >= 400:
                    raise await _answer_error(resp)
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise map_error(int(status.get("code") or 500), status)
                    yield event
        except (aiohttp.ClientError, TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                json.JSONDecodeError) as exc:
            raise TransientError(0, "WatchBroken", str(exc)) from exc


async def _answer_error(resp: aiohttp.ClientResponse) -> ApiError:
    """The error of a non-2xx answer read as a stream (a watch, a log): its Status, if JSON, else
    the start of whatever page a proxy sent. Reads at most 64 KiB of it."""
    raw = b""
    while len(raw) < 64 * 1024 and (chunk := await resp.content.read(64 * 1024 - len(raw))):
        raw += chunk
    try:
        body = orjson.loads(raw or b"{}")
    except json.JSONDecodeError:
        body = {"message": raw[:512].decode(errors="replace")}
    return map_error(resp.status, body if isinstance(body, dict) else {}, resp.headers.get("Retry-After"))


def _query(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: _param(v) for k, v in (params or {}).items() if v is not None}


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
