"""HTTPS for `necrocode-api`: the certificate is re-read when its files change.

A certificate from cert-manager (or any issuer that writes a kubernetes.io/tls Secret) is renewed
before it expires, and the kubelet updates the mounted files; a server that read them only at
start would go on presenting the old one until it expired. So the served context reloads the
chain and key when the files change, for the handshakes that follow; open connections keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

_LOG = logging.getLogger("necrocode.api.tls")


def _stamp(*paths: str) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or swapped (a Secret volume swaps a symlink)."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class CertReloader:
    """Reloads `context`'s certificate chain and key from `cert`/`key` when they change,
    checking every `seconds` (in the server's event loop, where the handshakes happen)."""

    def __init__(self, context: ssl.SSLContext, cert: str, key: str, seconds: float = 60.0) -> None:
        self.context, self.cert, self.key, self.seconds = context, cert, key, seconds
        self.loaded = _stamp(cert, key)
        self.reloads = 0

    def check(self) -> bool:
        """Reload if the files changed; True when it did. A half-written pair (the key does not
        match the certificate yet) is left for the next check; the old one stays in use."""
        try:
            now = _stamp(self.cert, self.key)
            if now == self.loaded:
                return False
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            _LOG.warning("cannot reload the TLS certificate (keeping the one in use): %s", exc)
            return False
        self.loaded = now
        self.reloads += 1
        _LOG.info("TLS certificate reloaded from %s", self.cert)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            self.check()
