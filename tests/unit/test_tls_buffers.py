"""Lazy TLS read buffers (necrocode.tlsbuffers): every byte still arrives, in order, over a TLS
connection on loopback (no API server), and an open connection no longer holds a resident
256 KiB buffer of its own."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import mmap
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from necrocode import tlsbuffers

PAYLOAD = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MiB: many reads, bigger than one buffer


@pytest.fixture
def lazy() -> Iterator[None]:
    shipped = asyncio.sslproto.SSLProtocol
    tlsbuffers.install()
    try:
        yield
    finally:
        asyncio.sslproto.SSLProtocol = shipped  # type: ignore[misc]


def _contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tmp / "c.crt", tmp / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def _round_trip(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[bytes, object]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        for i in range(0, len(PAYLOAD), 50_000):  # in pieces, as a stream of events comes
            writer.write(PAYLOAD[i:i + 50_000])
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        protocol = writer.transport._ssl_protocol  # type: ignore[attr-defined]
        writer.write(b"go")
        got = await reader.read(-1)
        writer.close()
        return got, protocol
    finally:
        srv.close()
        await srv.wait_closed()


def test_every_byte_arrives_in_order_through_a_lazy_buffer(lazy: None, tmp_path: Path) -> None:
    got, protocol = asyncio.run(_round_trip(*_contexts(tmp_path)))
    assert got == PAYLOAD
    assert isinstance(protocol._ssl_buffer, mmap.mmap)  # type: ignore[attr-defined]
    assert len(protocol._ssl_buffer) == asyncio.sslproto.SSLProtocol.max_size  # type: ignore[attr-defined]  # reads as large as before


def test_installing_twice_is_harmless(lazy: None) -> None:
    tlsbuffers.install()
    assert tlsbuffers.installed()
    assert asyncio.sslproto.SSLProtocol.__mro__[1] is tlsbuffers._SHIPPED
