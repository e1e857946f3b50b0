"""Who is calling, and may they: the cluster's own authentication and RBAC.

A caller sends a Kubernetes bearer token (a ServiceAccount token, an OIDC id token, anything
the API server accepts). The API server says whose it is (TokenReview) and whether that user
may do the thing (SubjectAccessReview, with the user's groups, uid and extra). The REST API
has no users, roles or policies of its own.

Successful answers are cached for a few seconds (bounded), keyed by a hash of the token, so
a busy console does not send two reviews per request. A token the API server rejected is
remembered too (a bounded negative cache, by hash), and each client has a budget of failed
authentications (`limits.FailureLimiter`), so a flood of bogus tokens costs a bounded number
of TokenReviews. With `audiences`, a token counts only if it was issued for one of them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from necrocode.api.limits import FailureLimiter, retry_after
from necrocode.kube import ApiError, Kube
from necrocode.model import GROUP

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
ANONYMOUS = "system:anonymous"
TOKEN_MAX = 16384  # longer is no token the API server issues; refuse without asking it

_LOG = logging.getLogger("necrocode.api.auth")


@dataclass(frozen=True)
class Caller:
    """An authenticated user, as the API server's TokenReview described it."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    @property
    def key(self) -> Hashable:
        return (self.username, self.uid, self.groups, self.extra)

    def user_spec(self) -> dict[str, Any]:
        """The user fields of a SubjectAccessReview's spec."""
        spec: dict[str, Any] = {"user": self.username, "groups": list(self.groups)}
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {k: list(v) for k, v in self.extra}
        return spec


ANONYMOUS_CALLER = Caller(username=ANONYMOUS, groups=("system:unauthenticated",))


def caller_of(user: dict[str, Any]) -> Caller:
    extra = user.get("extra") or {}
    return Caller(
        username=str(user.get("username") or ""),
        uid=str(user.get("uid") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra=tuple(sorted((str(k), tuple(str(x) for x in (v or ()))) for k, v in extra.items())),
    )


class TtlCache:
    """At most `size` entries, each valid for `seconds`; the least recently stored goes first."""

    def __init__(self, seconds: float, size: int, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.size, self.clock = seconds, size, clock
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if self.clock() >= expires:
            del self._data[key]
            return None
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.seconds <= 0 or self.size <= 0:
            return
        self._data.pop(key, None)
        self._data[key] = (self.clock() + self.seconds, value)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def too_many_failures(seconds: float) -> HTTPException:
    return HTTPException(status_code=429, detail="too many failed authentications from this client; try again later",
                         headers={"Retry-After": retry_after(seconds)})


def token_key(token: str) -> str:
    """What the caches keep of a token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Authenticator:
    """TokenReview and SubjectAccessReview through the server's own credentials (`kube`)."""

    def __init__(self, kube: Kube, *, allow_anonymous: bool = False, cache_seconds: float = 10.0,
                 cache_size: int = 1024, audiences: Sequence[str] = (), failures: FailureLimiter | None = None,
                 rejected_seconds: float = 60.0, rejected_size: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.allow_anonymous = allow_anonymous
        self.audiences = tuple(audiences)
        self.tokens = TtlCache(cache_seconds, cache_size, clock)
        self.decisions = TtlCache(cache_seconds, cache_size, clock)
        self.rejected = TtlCache(rejected_seconds, rejected_size, clock)
        self.failures = failures if failures is not None else FailureLimiter(clock=clock)
        self.reviews = 0  # TokenReviews sent (for tests and metrics)
        self.throttled = 0  # requests answered 429

    async def authenticate(self, token: str | None, client: str = "") -> Caller:
        """The caller of a bearer token; 401 when there is none or the API server does not know
        it; 429 when `client` (its IP address) has used up its failed authentications. A token
        known good is served whatever the client's budget: it costs the API server nothing."""
        if not token:
            if self.allow_anonymous:
                return ANONYMOUS_CALLER
            raise unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        key = token_key(token)
        cached: Caller | None = self.tokens.get(key)
        if cached is not None:
            return cached
        wait = self.failures.take(client)
        if wait:
            self.throttled += 1
            raise too_many_failures(wait)
        caller = await self._review_token(token, key)
        self.failures.give_back(client)
        self.tokens.put(key, caller)
        return caller

    async def _review_token(self, token: str, key: str) -> Caller:
        """Ask the API server (unless the token was rejected lately); 401, remembered, when it
        does not authenticate the token for one of our audiences."""
        if len(token) > TOKEN_MAX or self.rejected.get(key):
            raise unauthorized("the bearer token was not accepted")
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        self.reviews += 1
        review = await self._review(TOKEN_REVIEW_PATH, body, "the bearer token")
        status = review.get("status") or {}
        user = status.get("user") or {}
        if not status.get("authenticated") or not user.get("username") or not self._for_us(status):
            self.rejected.put(key, True)
            raise unauthorized("the bearer token was not accepted")
        return caller_of(user)

    def _for_us(self, status: dict[str, Any]) -> bool:
        """Whether the token was issued for one of our audiences (any, when none are set: the API
        server then checked it against its own). The API server lists in status.audiences those
        of spec.audiences the token is valid for; an empty intersection means not for us."""
        if not self.audiences:
            return True
        return bool(set(self.audiences) & {str(a) for a in status.get("audiences") or ()})

    async def _review(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """POST a TokenReview or SubjectAccessReview; an API server that cannot answer is a 503."""
        try:
            return await self.kube.request("POST", path, body=body)
        except ApiError as exc:
            _LOG.warning("%s failed: %s", body["kind"], exc)
            raise HTTPException(status_code=503, detail=f"cannot check {what} now: the Kubernetes API "
                                                        f"answered {exc.status or 'nothing'}") from None

    async def allowed(self, caller: Caller, verb: str, plural: str, namespace: str, group: str = GROUP) -> bool:
        key = (caller.key, verb, group, plural, namespace)
        if self.decisions.get(key):
            return True
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {**caller.user_spec(),
                         "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                                "resource": plural}}}
        review = await self._review(ACCESS_REVIEW_PATH, body, "permissions")
        ok = bool((review.get("status") or {}).get("allowed"))
        if ok:
            self.decisions.put(key, True)
        return ok

    async def authorize(self, caller: Caller, verb: str, plural: str, namespace: str, group: str = GROUP) -> None:
        """403, naming the missing permission, unless RBAC lets the caller do it."""
        if not await self.allowed(caller, verb, plural, namespace, group):
            raise HTTPException(status_code=403, detail=f"user {caller.username} may not {verb} {plural}.{group} "
                                                        f"in namespace {namespace}")
