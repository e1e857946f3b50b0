"""The REST API's limits without a server: the body limit (ASGI middleware, fed message by
message, so what it reads is counted), the per-client budget of failed authentications, and the
Authenticator's bound on TokenReviews under a concurrent flood (a stand-in for the API server
that counts the reviews; the real one is in tests/cluster/test_api.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import HTTPException
from starlette.types import Message, Scope

from necrocode.api.auth import Authenticator
from necrocode.api.limits import BodyLimit, FailureLimiter, retry_after
from necrocode.kube import Credentials, Kube

KIB = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- the body limit
class Exchange:
    """One request through BodyLimit: the body arrives in `chunks`; counts what was read."""

    def __init__(self, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None,
                 disconnect_after: int | None = None):
        self.chunks, self.headers, self.disconnect_after = chunks, headers or [], disconnect_after
        self.read = 0
        self.sent: list[Message] = []
        self.app_body: bytes | None = None

    async def receive(self) -> Message:
        if (self.disconnect_after is not None and self.read >= self.disconnect_after) or self.read >= len(self.chunks):
            return {"type": "http.disconnect"}
        self.read += 1
        return {"type": "http.request", "body": self.chunks[self.read - 1], "more_body": self.read < len(self.chunks)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        first = await receive()
        self.app_body = first["body"]
        assert first["more_body"] is False
        assert (await receive())["type"] == "http.disconnect"  # then the server's own messages
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(self, limit: int) -> int | None:
        scope = {"type": "http", "method": "POST", "path": "/api/jobs/j/cancel", "headers": self.headers}
        await BodyLimit(self.app, max_bytes=limit)(scope, self.receive, self.send)
        return self.sent[0]["status"] if self.sent else None


async def test_a_declared_length_over_the_limit_is_413_without_reading_anything() -> None:
    ex = Exchange([b"x" * KIB] * 100, headers=[(b"content-length", str(100 * KIB).encode())])
    assert await ex.run(64 * KIB) == 413
    assert ex.read == 0 and ex.app_body is None
    assert (b"connection", b"close") in ex.sent[0]["headers"]
    assert b"larger than 65536 bytes" in ex.sent[1]["body"]


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit() -> None:
    ex = Exchange([b"x" * (16 * KIB)] * 1000)  # 16 MB chunked, no Content-Length
    assert await ex.run(64 * KIB) == 413
    assert ex.read == 5  # 80 KiB read of 16 MB: the fifth chunk passed 64 KiB
    assert ex.app_body is None


async def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    ex = Exchange([b"a" * 100, b"b" * 100, b""], headers=[(b"content-length", b"200")])
    assert await ex.run(200) == 200
    assert ex.app_body == b"a" * 100 + b"b" * 100
    empty = Exchange([b""])
    assert await empty.run(0) == 200 and empty.app_body == b""


async def test_a_client_gone_mid_body_never_reaches_the_app() -> None:
    ex = Exchange([b"x"] * 10, disconnect_after=3)
    assert await ex.run(64 * KIB) is None
    assert ex.app_body is None and ex.sent == []


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        raise AssertionError("not read")

    await BodyLimit(app, 1)({"type": "lifespan"}, nothing, nothing)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


# ----------------------------------------------------------------------------- the failure budget
def test_each_client_has_a_burst_then_a_steady_rate() -> None:
    clock = Clock()
    lim = FailureLimiter(burst=3, per_second=0.5, clients=100, clock=clock)
    assert [lim.take("a") for _ in range(3)] == [0, 0, 0]
    assert lim.take("a") == pytest.approx(2.0)  # one token every 2 s
    assert lim.take("b") == 0  # another client is not affected
    clock.now += 1.0
    assert lim.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert lim.take("a") == 0 and lim.take("a") > 0
    clock.now += 3600
    assert [lim.take("a") for _ in range(4)][:3] == [0, 0, 0]  # refilled to the burst, no more


def test_a_good_token_gives_its_unit_back() -> None:
    lim = FailureLimiter(burst=1, per_second=0.001, clock=Clock())
    for _ in range(10):
        assert lim.take("a") == 0
        lim.give_back("a")
    assert lim.take("a") == 0 and lim.take("a") > 0


def test_the_table_of_clients_is_bounded_least_recently_seen_first() -> None:
    clock = Clock()
    lim = FailureLimiter(burst=1, per_second=0.001, clients=3, clock=clock)
    for c in ("a", "b", "c"):
        lim.take(c)
    lim.take("a")  # a seen again: b is now the oldest
    lim.take("d")
    assert len(lim) == 3
    assert lim.take("a") > 0 and lim.take("c") > 0  # still tracked
    assert lim.take("b") == 0  # dropped: a fresh bucket


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(s) for s in (0.0, 0.2, 1.0, 1.01, 59.5)] == ["1", "1", "1", "2", "60"]
    with pytest.raises(ValueError):
        FailureLimiter(burst=0)


# ----------------------------------------------------------------------------- the Authenticator
class CountingKube(Kube):
    """Answers TokenReviews as an API server would: `good` tokens (with their audiences) are
    authenticated, any other is not. Each review yields to the loop, so floods overlap."""

    def __init__(self, good: dict[str, list[str]]):
        super().__init__(Credentials(host="https://127.0.0.1:1", ssl=False, configuration=None))  # type: ignore[arg-type]
        self.good = good
        self.bodies: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        body = kw["body"]
        self.bodies.append(body)
        await asyncio.sleep(0.001)
        token, wanted = body["spec"]["token"], body["spec"].get("audiences")
        if token not in self.good:
            return {"status": {"authenticated": False, "error": "invalid bearer token"}}
        has = self.good[token]
        matched = [a for a in wanted if a in has] if wanted else has
        if wanted and not matched:
            return {"status": {"authenticated": False, "error": "token audiences are invalid"}}
        return {"status": {"authenticated": True, "user": {"username": f"user-{token}", "groups": ["g1", "g2"]},
                           "audiences": matched}}


async def outcome(auth: Authenticator, token: str, client: str) -> int:
    try:
        await auth.authenticate(token, client)
    except HTTPException as exc:
        if exc.status_code == 429:
            assert exc.headers and int(exc.headers["Retry-After"]) >= 1
        return exc.status_code
    return 200


async def test_a_concurrent_flood_of_bogus_tokens_costs_at_most_the_burst() -> None:
    clock = Clock()  # time stands still: nothing refills
    kube = CountingKube({"good": ["https://kubernetes.default.svc"]})
    auth = Authenticator(kube, failures=FailureLimiter(burst=5, per_second=1, clock=clock), clock=clock)
    tokens = [f"bogus-{i}" for i in range(300)] + ["same-bogus"] * 300
    codes = await asyncio.gather(*(outcome(auth, t, "10.0.0.1") for t in tokens))
    assert auth.reviews == len(kube.bodies) <= 5
    assert set(codes) == {401, 429} and codes.count(429) >= 590 and auth.throttled == codes.count(429)
    # another client is served, and a token that failed is not reviewed again, from any client
    assert await outcome(auth, "good", "10.0.0.2") == 200
    before = auth.reviews
    rejected = next(t for t, c in zip(tokens, codes, strict=True) if c == 401)
    assert await outcome(auth, rejected, "10.0.0.3") == 401
    assert auth.reviews == before
    # a known good token is served even to the flooding client
    assert await outcome(auth, "good", "10.0.0.1") == 200 and auth.reviews == before


async def test_the_rejected_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    auth = Authenticator(CountingKube({}), failures=FailureLimiter(burst=1000, clock=clock), rejected_seconds=30,
                         rejected_size=2, clock=clock)
    for t in ("a", "b", "a", "b"):
        assert await outcome(auth, t, "c") == 401
    assert auth.reviews == 2
    assert await outcome(auth, "c", "c") == 401  # evicts a
    assert await outcome(auth, "a", "c") == 401 and auth.reviews == 4
    clock.now += 31
    assert await outcome(auth, "a", "c") == 401 and auth.reviews == 5


async def test_audiences_are_sent_and_a_token_for_another_audience_is_401() -> None:
    kube = CountingKube({"for-api": ["necrocode-api"], "for-kube": ["https://kubernetes.default.svc"]})
    auth = Authenticator(kube, audiences=["necrocode-api", "console"])
    caller = await auth.authenticate("for-api", "c")
    assert caller.username == "user-for-api" and caller.groups == ("g1", "g2")
    assert kube.bodies[0]["spec"]["audiences"] == ["necrocode-api", "console"]
    assert await outcome(auth, "for-kube", "c") == 401
    # without audiences, none are sent: the API server's own apply
    plain = CountingKube({"for-kube": ["https://kubernetes.default.svc"]})
    assert (await Authenticator(plain).authenticate("for-kube")).username == "user-for-kube"
    assert "audiences" not in plain.bodies[0]["spec"]


async def test_a_review_that_says_authenticated_for_no_audience_of_ours_is_refused() -> None:
    class Lax(CountingKube):  # an authenticator that does not filter status.audiences itself
        async def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
            return {"status": {"authenticated": True, "user": {"username": "u"}, "audiences": ["elsewhere"]}}

    assert await outcome(Authenticator(Lax({}), audiences=["necrocode-api"]), "t", "c") == 401


# ----------------------------------------------------------------------------- settings
def test_settings_from_the_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from necrocode.api.server import ApiSettings, parse_settings

    assert (ApiSettings().max_body_bytes, ApiSettings().audiences) == (64 * KIB, ())
    monkeypatch.setenv("NECROCODE_API_AUDIENCES", " necrocode-api, ,console ")
    monkeypatch.setenv("NECROCODE_API_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("NECROCODE_API_TLS_CERT_FILE", "/tls/tls.crt")
    monkeypatch.setenv("NECROCODE_API_TLS_KEY_FILE", "/tls/tls.key")
    env = parse_settings([])
    assert (env.audiences, env.max_body_bytes, env.tls_cert_file, env.tls_key_file) == (
        ("necrocode-api", "console"), 1000, "/tls/tls.crt", "/tls/tls.key")
    flags = parse_settings(["--audience", "a", "--audience", "b", "--max-body-bytes", "10"])
    assert (flags.audiences, flags.max_body_bytes) == (("a", "b"), 10)
    monkeypatch.delenv("NECROCODE_API_TLS_KEY_FILE")
    with pytest.raises(SystemExit):
        parse_settings([])  # a certificate without its key
