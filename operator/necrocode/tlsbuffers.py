"""Lazy TLS read buffers: an open TLS connection of the operator costs ~65 KiB of RSS, not ~317.

Why: CPython's asyncio TLS transport (3.11 here, 3.12 and 3.13 alike) gives every connection a
read buffer of SSLProtocol.max_size, 256 KiB, allocated and zero-filled when the connection
opens (python/cpython#109534), so each one is resident at once whatever the connection carries.
The operator holds many: a watch per cancellation at work (1,000 with 1,000 JobCancellations in
flight) and kopf's connections, one per request it has in flight (330 at once when 1,000
cancellations are created within a second); freed, that memory is not given back to the system
either. Measured through necrocode.kube.Kube, 400 open watches: +317 KiB each as shipped, +65 KiB
with this buffer, +79 KiB with a 16 KiB max_size (the other way to save it, which would cut a
busy stream's reads to 16 KiB a loop turn: a 5,000-pod list, or a watch of 5,000 runners, would
come in 16 times slower while the loop is loaded).

How: the buffer stays 256 KiB, but as an anonymous memory map, whose zero pages take no memory
until a read writes into them; a connection holds what its largest read needed, and the map is
returned to the system when the connection closes. Reads are unchanged (same size, same code);
only the allocation differs. uvloop (opt-in) has its own TLS code and is not affected.
"""

from __future__ import annotations

import asyncio.sslproto
import mmap
from typing import Any

_SHIPPED = asyncio.sslproto.SSLProtocol


class _LazyBufferSSLProtocol(_SHIPPED):
    """asyncio's SSLProtocol with its read buffer as an anonymous map (untouched pages are free)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl_buffer = mmap.mmap(-1, self.max_size)
        self._ssl_buffer_view = memoryview(self._ssl_buffer)


def install() -> None:
    """Use lazy buffers for every TLS connection this process opens from now on (process-wide,
    idempotent; a Python whose SSLProtocol has no such buffer is left as it is)."""
    if asyncio.sslproto.SSLProtocol is _SHIPPED and hasattr(_SHIPPED, "max_size"):
        asyncio.sslproto.SSLProtocol = _LazyBufferSSLProtocol  # type: ignore[misc]


def installed() -> bool:
    return asyncio.sslproto.SSLProtocol is _LazyBufferSSLProtocol
