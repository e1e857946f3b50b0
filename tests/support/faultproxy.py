"""A fault-injecting TCP proxy between a client (the operator) and the API server.

Network faults are the ones a client library gets wrong most often, and they cannot be
produced by the API server itself: a connection reset in the middle of a response, a peer
that accepts and then never answers, a slow link. This proxy produces them with real sockets
on loopback, so the client's own TCP/TLS stack sees exactly what it would see in production.

    with FaultProxy("127.0.0.1", apiserver_port) as proxy:
        kubeconfig = proxy_kubeconfig(cluster.kubeconfig, tmp_path / "proxied.kubeconfig", proxy)
        ...                                   # start the client with that kubeconfig
        proxy.reset()                         # RST every live and every new connection
        proxy.drop(probability=0.5)           # black-hole half of the connections
        proxy.delay(0.5)                      # 0.5 s before every forwarded chunk
        proxy.delay(2.0, per="connection")    # 2 s before a new connection reaches upstream
        proxy.passthrough()                   # lift the fault
        print(proxy.stats)                    # ProxyStats(connections=.., resets=.., ...)

It forwards bytes only; TLS passes through unchanged (the local API server's certificate has
the SAN 127.0.0.1, so the client's hostname check passes for the proxy's address too).

Modes (`set_mode`, or the shorthands above):

- ``pass``: forward everything.
- ``delay``: sleep `seconds` before forwarding each chunk (either direction), or, with
  ``per="connection"``, once before a new connection is connected upstream.
- ``reset``: abort affected live connections and every affected new one on accept with
  SO_LINGER 0, so the client receives a TCP RST (ECONNRESET), not an orderly FIN.
- ``drop``: black-hole affected connections: keep accepting and reading, discard the bytes,
  never answer. A connection once black-holed stays so until the client gives up on it (its
  byte stream is corrupt anyway), even after the mode is lifted; that is what a client meets
  behind a dead NAT entry or a silently rebooted peer, and only its own timeouts save it.

`probability` selects the affected connections: each connection draws one number in [0, 1)
when it is accepted and is affected by every fault while that number is below the current
probability (so the same connections stay affected across mode changes).

The proxy runs its own asyncio loop in a daemon thread, so synchronous tests can use it; the
mode setters are thread-safe and return once live connections have been acted on.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

Mode = Literal["pass", "delay", "reset", "drop"]
CHUNK = 64 * 1024


@dataclass(frozen=True)
class ProxyStats:
    connections: int = 0
    """connections accepted so far"""
    active: int = 0
    """connections open now"""
    resets: int = 0
    """connections aborted with an RST"""
    dropped: int = 0
    """connections black-holed"""
    delayed: int = 0
    """chunks or connection attempts held back by a delay"""
    upstream_failures: int = 0
    """connections closed because the upstream could not be reached (e.g. API server down)"""


@dataclass(frozen=True)
class _Fault:
    mode: Mode = "pass"
    seconds: float = 0.0
    per: Literal["chunk", "connection"] = "chunk"
    probability: float = 1.0


class _Conn:
    """One proxied connection: the client side, the upstream side and the pumps between them."""

    def __init__(self, draw: float, client: asyncio.StreamWriter):
        self.draw = draw
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.blackholed = False
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []


class FaultProxy:
    """A TCP proxy on 127.0.0.1:<free port> to `target_host:target_port` (see the module doc)."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, seed: int | None = None):
        self.target = (target_host, target_port)
        self.host = listen_host
        self.port = listen_port
        self._rand = random.Random(seed)
        self._fault = _Fault()
        self._stats = ProxyStats()
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The https URL a kubeconfig's `server` should name."""
        return f"https://{self.address}"

    def start(self) -> FaultProxy:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port, reuse_address=True))
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy-{self.target[1]}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                self._close(conn, rst=False)
            tasks = [t for c in list(self._conns) for t in c.tasks]
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ runtime API
    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return self._stats

    @property
    def mode(self) -> Mode:
        return self._fault.mode

    def set_mode(self, mode: Mode, seconds: float = 0.0, per: Literal["chunk", "connection"] = "chunk",
                 probability: float = 1.0) -> None:
        """Switch the fault for new and live connections; returns once live ones are acted on."""
        if mode not in ("pass", "delay", "reset", "drop"):
            raise ValueError(f"unknown mode {mode!r}")
        self._fault = _Fault(mode, seconds, per, probability)
        if mode in ("reset", "drop") and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._apply_to_live(), self._loop).result(10)

    def passthrough(self) -> None:
        self.set_mode("pass")

    def delay(self, seconds: float, per: Literal["chunk", "connection"] = "chunk",
              probability: float = 1.0) -> None:
        self.set_mode("delay", seconds=seconds, per=per, probability=probability)

    def reset(self, probability: float = 1.0) -> None:
        self.set_mode("reset", probability=probability)

    def drop(self, probability: float = 1.0) -> None:
        self.set_mode("drop", probability=probability)

    # ------------------------------------------------------------------ internals
    def _count(self, **inc: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = replace(s, **{k: getattr(s, k) + v for k, v in inc.items()})

    def _affected(self, conn: _Conn, mode: Mode) -> bool:
        f = self._fault
        return f.mode == mode and conn.draw < f.probability

    async def _apply_to_live(self) -> None:
        for conn in list(self._conns):
            if self._affected(conn, "reset"):
                self._close(conn, rst=True)
            elif self._affected(conn, "drop") and not conn.blackholed:
                conn.blackholed = True
                self._count(dropped=1)

    def _close(self, conn: _Conn, rst: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for w in (conn.client, conn.upstream):
            if w is None:
                continue
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    try:  # linger on, timeout 0: close() sends RST and discards unsent data
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                w.transport.abort()
            else:
                w.close()
        if rst:
            self._count(resets=1)
        for t in conn.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(self._rand.random(), writer)
        self._conns.add(conn)
        self._count(connections=1, active=1)
        task = asyncio.current_task()
        if task is not None:
            conn.tasks.append(task)
        try:
            await self._serve(conn, reader, writer)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._close(conn, rst=False)
            self._conns.discard(conn)
            self._count(active=-1)

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._affected(conn, "reset"):
            self._close(conn, rst=True)
            return
        if self._affected(conn, "drop"):
            conn.blackholed = True
            self._count(dropped=1)
            await self._discard(reader)
            return
        if self._affected(conn, "delay") and self._fault.per == "connection":
            self._count(delayed=1)
            await asyncio.sleep(self._fault.seconds)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
        except (OSError, TimeoutError):
            self._count(upstream_failures=1)
            return
        conn.upstream = up_writer
        if conn.closed:  # reset while connecting
            up_writer.transport.abort()
            return
        loop = asyncio.get_running_loop()
        to_up = loop.create_task(self._pump(conn, reader, up_writer))
        to_client = loop.create_task(self._pump(conn, up_reader, writer))
        conn.tasks += [to_up, to_client]
        # The client's end decides; the upstream's end decides too unless the connection is
        # black-holed (then the client must keep seeing silence, not a FIN).
        done, _ = await asyncio.wait({to_up, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_client in done and conn.blackholed and not to_up.done():
            await to_up

    async def _pump(self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    return
                if conn.blackholed:
                    continue
                if self._affected(conn, "delay") and self._fault.per == "chunk":
                    self._count(delayed=1)
                    await asyncio.sleep(self._fault.seconds)
                    if conn.blackholed:
                        continue
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            return

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        while await reader.read(CHUNK):
            pass


def proxy_kubeconfig(src: Path, dst: Path, proxy: FaultProxy | str) -> Path:
    """Write a copy of kubeconfig `src` to `dst` whose clusters' `server` is the proxy (a
    FaultProxy or an https URL). Credentials and CA stay as they are (paths are absolute)."""
    doc = yaml.safe_load(src.read_text())
    url = proxy.url if isinstance(proxy, FaultProxy) else proxy
    for cluster in doc.get("clusters", []):
        cluster["cluster"]["server"] = url
    dst.write_text(yaml.safe_dump(doc))
    return dst
