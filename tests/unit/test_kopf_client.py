"""kopf's bounded connection pool (necrocode.kopfclient): its size leaves a connection for each of
kopf's watch streams, and the session kopf is given really holds no more connections than that
(checked against an HTTP server on loopback, counting the connections it accepts)."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from aiohttp import web

from necrocode import kopfclient
from necrocode.kopfclient import REQUEST_CONNECTIONS


@pytest.mark.parametrize(("namespaces", "scanning", "limit"), [
    ((), True, 2 + 2 + REQUEST_CONNECTIONS),  # cluster-wide: a stream per resource, and kopf's scans
    ((), False, 2 + REQUEST_CONNECTIONS),
    (("team-a",), False, 2 + REQUEST_CONNECTIONS),
    (("a", "b", "c"), False, 6 + REQUEST_CONNECTIONS),  # a stream per resource and namespace
    (("team-*",), True, 0),  # patterns: how many namespaces is unknown, unbounded as kopf ships it
    (("a", "!b"), True, 0),
])
def test_connection_limit(namespaces: tuple[str, ...], scanning: bool, limit: int) -> None:
    assert kopfclient.connection_limit(namespaces, scanning) == limit


async def test_the_session_holds_at_most_limit_connections() -> None:
    peers: set[object] = set()
    most = 0
    in_flight = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal most, in_flight
        peers.add(request.transport)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="t0k3n", default_namespace="ns")
        ctx = kopfclient.bounded_session(info, limit=3)
        assert (ctx.server, ctx.default_namespace) == (info.server, "ns")
        session = ctx.aiohttp_session
        try:
            async def get() -> str:
                async with session.get(f"{info.server}/x") as resp:
                    assert resp.status == 200
                    return str(resp.request_info.headers["Authorization"])

            auth = await asyncio.gather(*(get() for _ in range(12)))
        finally:
            await session.close()
        assert set(auth) == {"Bearer t0k3n"}  # kopf's credentials go with every request
        assert most == 3 and len(peers) == 3, (most, len(peers))  # 12 requests queued on 3 connections
    finally:
        await runner.cleanup()
