"""What a request may cost the REST API before anyone knows who sent it.

Two limits, both applied before a TokenReview is sent, so an anonymous flood costs neither
memory nor API server calls without bound:

- `BodyLimit`: a request body over `max_bytes` is answered 413 as soon as that is known (from
  Content-Length, or while a chunked body is read), before routing and authentication; the rest
  of the body is never read. FastAPI reads a route's body *before* it runs its dependencies (the
  authentication among them), so the limit has to sit in front of the app, as ASGI middleware.
- `FailureLimiter`: each client (IP address) has a budget of failed authentications, a token
  bucket of `burst` refilled at `per_second`; an empty bucket is answered 429 with Retry-After.
  The table of clients is bounded (least recently seen dropped first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_DEFAULT = 64 * 1024


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it has none (chunked, or no body)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses these before the app sees them
    return None


async def _too_large(send: Send, max_bytes: int) -> None:
    """413, and `Connection: close`: the unread rest of the body must not be taken for the next request."""
    body = orjson.dumps({"detail": f"the request body is larger than {max_bytes} bytes"})
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _TooLarge(Exception):
    """The body grew past the limit while it was read."""


class BodyLimit:
    """ASGI middleware: reads each HTTP request's body first, at most `max_bytes` of it, and
    answers 413 instead of calling the app when there is more. A body within the limit is handed
    to the app as one message (the API's bodies are small JSON documents)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_DEFAULT) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        try:
            body = await self._read(receive)
        except _TooLarge:
            await _too_large(send, self.max_bytes)
            return
        if body is not None:  # None: the client went away before it finished sending
            await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body; _TooLarge as soon as more than `max_bytes` arrived."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands out the buffered body once, then the server's own messages
    (a disconnect, when the client goes away)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()
    return replay


# ----------------------------------------------------------------------------- failed authentications
@dataclass
class _Bucket:
    tokens: float
    at: float


class FailureLimiter:
    """Per client, a token bucket of failed authentications: `burst` at once, then one every
    1/`per_second` seconds. The caller takes a token *before* it asks the API server about a
    token it does not know, and gives it back when the token was good; so however many requests
    a client sends, and however many at once, the TokenReviews its bad tokens cost stay within
    burst + per_second x elapsed seconds. At most `clients` buckets are kept; the least recently
    seen goes first (a bucket unused for burst/per_second seconds is full, as a new one is)."""

    def __init__(self, burst: int = 10, per_second: float = 1.0, clients: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or per_second <= 0 or clients < 1:
            raise ValueError("burst and clients must be >= 1, and per_second > 0")
        self.burst, self.per_second, self.clients, self.clock = burst, per_second, clients, clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, client: str) -> _Bucket:
        """The client's bucket, refilled up to now."""
        now = self.clock()
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        self._buckets[client] = bucket  # most recently seen last
        while len(self._buckets) > self.clients:
            self._buckets.popitem(last=False)
        return bucket

    def take(self, client: str) -> float:
        """0 when the client may try a token (one taken from its bucket); else the seconds until it may."""
        bucket = self._bucket(client)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.per_second

    def give_back(self, client: str) -> None:
        """The token tried was good: it was no failure."""
        bucket = self._bucket(client)
        bucket.tokens = min(float(self.burst), bucket.tokens + 1)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
