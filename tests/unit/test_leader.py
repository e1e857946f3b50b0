"""Leader election and fencing (necrocode.leader), without a server: a fake HTTP session under
the real Kube client (so the real `Kube.guard` call is exercised) and a ManualClock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
import pytest
from kubernetes import client as k8s_client

from necrocode.clock import ManualClock
from necrocode.kube import Credentials, Kube, NotLeader, core_path, lease_path
from necrocode.leader import (
    ElectorKube,
    LeaderElector,
    LeaderTiming,
    fence_open,
    run_leading,
    standby_may_take,
    validate_timing,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NS, NAME = "ops", "necrocode-cancel-leader"
LEASE = lease_path(NS, NAME)


# ----------------------------------------------------------------------------- a fake API server
class FakeServer:
    """Leases with resourceVersion checks; every other write answers 200. `sent` records every
    request that reached it; `slow` advances the clock while a request is 'in flight'; `fail`
    answers 500 to requests whose method is in it."""

    def __init__(self, clock: ManualClock):
        self.clock = clock
        self.leases: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.sent: list[tuple[str, str]] = []
        self.slow = 0.0
        self.fail: set[str] = set()

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.sent.append((method, path))
        self.clock.advance(self.slow)
        if method in self.fail:
            return 500, {"reason": "InternalError", "message": "injected"}
        if not path.startswith(lease_path(NS)):
            return (200, {"items": [], "metadata": {}}) if method == "GET" else (200, {})
        if method == "GET":
            return (200, orjson.loads(orjson.dumps(self.leases[path]))) if path in self.leases else \
                (404, {"reason": "NotFound", "message": "not found"})
        if method == "POST":
            full = f"{path}/{body['metadata']['name']}"
            if full in self.leases:
                return 409, {"reason": "AlreadyExists", "message": "exists"}
            self._store(full, body)
            return 201, self.leases[full]
        if method == "PUT":
            cur = self.leases.get(path)
            if cur is None:
                return 404, {"reason": "NotFound", "message": "not found"}
            if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                return 409, {"reason": "Conflict", "message": "the object has been modified"}
            self._store(path, body)
            return 200, self.leases[path]
        return 405, {"reason": "MethodNotAllowed", "message": method}

    def _store(self, path: str, body: dict[str, Any]) -> None:
        self.rv += 1
        obj = orjson.loads(orjson.dumps(body))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.leases[path] = obj

    def spec(self) -> dict[str, Any]:
        return dict(self.leases[LEASE]["spec"])

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.sent if r[0] != "GET"]


class _Resp:
    def __init__(self, status: int, body: Any):
        self.status, self._body = status, body
        self.headers: dict[str, str] = {}

    async def read(self) -> bytes:
        return orjson.dumps(self._body)

    async def __aenter__(self) -> _Resp:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None


class _Session:
    closed = False

    def __init__(self, server: FakeServer):
        self.server = server

    def request(self, method: str, url: str, *, data: bytes | None = None, **_: Any) -> _Resp:
        path = url.removeprefix("http://fake")
        status, body = self.server.answer(method, path, orjson.loads(data) if data else None)
        return _Resp(status, body)

    async def close(self) -> None:
        return None


def _creds() -> Credentials:
    return Credentials(host="http://fake", ssl=False, configuration=k8s_client.Configuration())


class FakeElectorKube(ElectorKube):
    def __init__(self, server: FakeServer):
        super().__init__(_creds())
        self._fake = _Session(server)

    @property
    def session(self) -> Any:
        return self._fake


class FakeOperatorKube(Kube):
    def __init__(self, server: FakeServer):
        super().__init__(_creds())
        self._fake = _Session(server)

    @property
    def session(self) -> Any:
        return self._fake


@pytest.fixture(autouse=True)
def no_guard() -> Iterator[None]:
    yield
    Kube.guard = None


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make(server: FakeServer, identity: str = "me", timing: LeaderTiming | None = None) -> LeaderElector:
    return LeaderElector(FakeElectorKube(server), NS, NAME, identity, clock=server.clock,
                         timing=timing or LeaderTiming(15, 10, 2))


# ----------------------------------------------------------------------------- the rules
def test_timing_defaults_are_client_go_ratios() -> None:
    assert LeaderTiming() == LeaderTiming(15, 10.0, 2.0)
    assert LeaderTiming.scaled(15) == LeaderTiming(15, 10.0, 2.0)
    assert LeaderTiming.scaled(6) == LeaderTiming(6, 4.0, 0.8)
    assert LeaderTiming.scaled(6, 3, 1) == LeaderTiming(6, 3.0, 1.0)


@pytest.mark.parametrize(("lease", "deadline", "retry", "words"), [
    (15, 15, 2, "renew deadline (15s) must be shorter than the lease duration (15s)"),
    (6, 8, 1, "renew deadline (8s) must be shorter than the lease duration (6s)"),
    (15, 10, 10, "retry period (10s) must be shorter than the renew deadline (10s)"),
    (15, 0, 2, "must be positive"),
    (0, 0.5, 0.1, "whole number of seconds, at least 1"),
])
def test_inconsistent_timing_is_refused_with_a_clear_error(lease: int, deadline: float, retry: float,
                                                            words: str) -> None:
    assert any(words in p for p in validate_timing(lease, deadline, retry))
    with pytest.raises(ValueError, match="must"):
        LeaderTiming(lease, deadline, retry)


def test_the_cli_refuses_a_renew_deadline_not_shorter_than_the_lease(capsys: pytest.CaptureFixture[str]) -> None:
    from necrocode.main import main

    with pytest.raises(SystemExit) as exc:
        main(["--leader-elect", "--leader-lease-seconds", "6", "--leader-renew-deadline-seconds", "6"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "renew deadline (6.0s) must be shorter than the lease duration (6s)" in err


def test_fence_is_open_only_before_the_deadline() -> None:
    assert not fence_open(None, 0.0, 10)
    assert fence_open(100.0, 100.0, 10)
    assert fence_open(100.0, 109.999, 10)
    assert not fence_open(100.0, 110.0, 10)
    assert not fence_open(100.0, 500.0, 10)


def test_standby_takes_only_a_free_lease_or_one_it_saw_unchanged_for_a_whole_duration() -> None:
    assert standby_may_take(None, 0.0, 0.0, 15)
    assert standby_may_take("", 0.0, 0.0, 15)
    assert not standby_may_take("other", 100.0, 115.0, 15)
    assert standby_may_take("other", 100.0, 115.001, 15)


# ----------------------------------------------------------------------------- the elector
def test_acquire_creates_the_lease_and_fences_writes_from_the_start_of_the_renewal() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    server.slow = 3.0  # every request takes 3 s: the deadline counts from the start
    run(e.acquire())
    assert server.spec()["holderIdentity"] == "me"
    assert e.renewed_at == 0.0 and clock.monotonic() == 6.0  # GET (404) and POST, 3 s each
    e.install()
    op = FakeOperatorKube(server)
    server.slow = 0.0
    clock.advance(3.999)  # 9.999 s after the renewal started, 3.999 s after it returned
    run(op.delete(core_path(NS, "pods", "p1")))
    clock.advance(0.001)
    before = list(server.sent)
    with pytest.raises(NotLeader):
        run(op.delete(core_path(NS, "pods", "p2")))
    assert server.sent == before, "the refused write must not be sent"
    assert (e.writes_allowed, e.writes_refused, e.lost) == (1, 1, True)
    # reads are not fenced
    run(op.get(core_path(NS, "pods", "p2")))


def test_refusal_is_for_good_even_if_a_late_renewal_succeeds() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    run(e.acquire())
    e.install()
    op = FakeOperatorKube(server)
    clock.advance(11)
    with pytest.raises(NotLeader):
        run(op.merge_patch(core_path(NS, "pods", "p"), {}))
    assert run(e.try_acquire())  # the elector's own client passes the fence
    with pytest.raises(NotLeader):
        run(op.merge_patch(core_path(NS, "pods", "p"), {}))


def test_the_elector_renews_through_the_fence_but_operator_writes_are_refused() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    run(e.acquire())
    e.install()
    clock.advance(30)  # a pause far past the lease
    op = FakeOperatorKube(server)
    with pytest.raises(NotLeader):
        run(op.create(core_path(NS, "events"), {"metadata": {"name": "x"}}))
    n = len(server.sent)
    assert run(e.try_acquire())
    assert [m for m, _ in server.sent[n:]] == ["GET", "PUT"]


def test_keep_renews_every_retry_period_and_never_loses_a_healthy_lease() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    run(e.acquire())
    lost: list[bool] = []

    async def go() -> None:
        task = asyncio.create_task(e.keep(lambda: lost.append(True)))
        for _ in range(100_000):  # ManualClock: each of keep's sleeps moves it on
            if clock.monotonic() >= 60:
                break
            await asyncio.sleep(0)
        task.cancel()

    run(go())
    assert not lost and not e.lost
    puts = [r for r in server.sent if r[0] == "PUT"]
    assert 25 <= len(puts) <= 31  # every 2 s for 60 s
    assert 0 <= clock.monotonic() - (e.renewed_at or 0) <= 2


def test_keep_stops_at_the_renew_deadline_when_renewals_fail() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    run(e.acquire())
    e.install()
    server.fail = {"PUT"}
    lost_at: list[float] = []
    run(e.keep(lambda: lost_at.append(clock.monotonic())))
    assert e.lost and lost_at == [10.0]
    assert "renew deadline" in e.lost_reason
    # tried every retry period until then
    assert len([r for r in server.sent if r[0] == "PUT"]) == 4  # at 2, 4, 6, 8 s
    with pytest.raises(NotLeader):
        run(FakeOperatorKube(server).delete(core_path(NS, "pods", "p")))


def test_keep_stops_at_once_when_another_instance_holds_the_lease() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    run(e.acquire())
    lease = server.leases[LEASE]
    lease["spec"]["holderIdentity"] = "other"
    lost: list[bool] = []
    run(e.keep(lambda: lost.append(True)))
    assert lost == [True] and e.lost and "another instance" in e.lost_reason
    assert clock.monotonic() == 2.0
    assert server.spec()["holderIdentity"] == "other"  # not taken back


def test_a_standby_waits_a_whole_lease_duration_by_its_own_clock() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    leader = make(server, "leader")
    run(leader.acquire())
    # the leader's renewTime says it renewed an hour "ago" (its wall clock is skewed): the
    # standby does not care, it goes by when it saw the record change
    server.leases[LEASE]["spec"]["renewTime"] = "2025-12-31T23:00:00.000000Z"
    standby = make(server, "standby")
    assert not run(standby.try_acquire())
    clock.advance(14)
    assert run(leader.try_acquire())  # a renewal: the standby starts counting again
    clock.advance(1)
    assert not run(standby.try_acquire())
    clock.advance(14)
    assert not run(standby.try_acquire())
    clock.advance(1.5)  # 15.5 s since it saw the last change
    assert run(standby.try_acquire())
    spec = server.spec()
    assert spec["holderIdentity"] == "standby" and spec["leaseTransitions"] == 1


def test_a_released_lease_is_taken_at_once() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    leader = make(server, "leader")
    run(leader.acquire())
    standby = make(server, "standby")
    assert not run(standby.try_acquire())
    run(leader.release())
    assert run(standby.try_acquire())


def test_run_leading_stops_operating_and_exits_1_when_the_lease_is_lost() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)
    writes: list[tuple[str, float]] = []

    async def operate(stop: asyncio.Event) -> None:
        op = FakeOperatorKube(server)
        server.fail = {"PUT"}  # renewals fail from now on
        while not stop.is_set():
            try:
                await op.merge_patch(core_path(NS, "pods", "p"), {})
                writes.append(("ok", clock.monotonic()))
            except NotLeader:
                writes.append(("refused", clock.monotonic()))
            await clock.sleep(0.5)

    code = run(run_leading(e, operate))
    assert code == 1 and e.lost
    ok = [t for what, t in writes if what == "ok"]
    refused = [t for what, t in writes if what == "refused"]
    assert ok and refused and max(ok) < 10.0 <= min(refused)
    assert server.spec()["holderIdentity"] == "me"  # a lost lease is not released


def test_run_leading_releases_the_lease_on_a_clean_stop() -> None:
    clock = ManualClock(T0)
    server = FakeServer(clock)
    e = make(server)

    async def operate(stop: asyncio.Event) -> None:
        await clock.sleep(5)

    assert run(run_leading(e, operate)) == 0
    assert not server.spec()["holderIdentity"]


def test_kopf_writes_go_through_the_same_fence(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import kopf
    from kopf._cogs.clients import api as kopf_api

    from necrocode.main import fence_kopf

    sent: list[str] = []

    class Answer:
        async def __aenter__(self) -> Answer:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def json(self) -> dict[str, Any]:
            return {}

    async def fake(method: str, *args: Any, **kwargs: Any) -> Answer:
        sent.append(method)
        return Answer()

    monkeypatch.setattr(kopf_api, "request", fake)  # restored afterwards, with the wrapper
    fence_kopf()
    fence_kopf()  # once only
    settings, logger = kopf.OperatorSettings(), logging.getLogger("test")

    def refuse() -> None:
        raise NotLeader(0, "NotLeader", "fenced")

    run(kopf_api.patch("/x", payload={}, settings=settings, logger=logger))
    Kube.guard = refuse
    with pytest.raises(NotLeader):
        run(kopf_api.patch("/x", payload={}, settings=settings, logger=logger))
    with pytest.raises(NotLeader):
        run(kopf_api.delete("/x", settings=settings, logger=logger))
    run(kopf_api.get("/x", settings=settings, logger=logger))
    assert sent == ["patch", "get"]
