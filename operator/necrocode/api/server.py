"""`necrocode-api`: the REST API for cancellations (docs/api.md).

It serves HTTP, authenticates callers with TokenReview and authorizes them with
SubjectAccessReview, creates and reads the same JobCancellation/TaskCancellation resources as
the CLI and kubectl, and lets the operator do the work. It runs as its own process of the
operator's image (not inside the operator's event loop), so a flood of HTTP requests cannot
slow the controller, and the two scale and fail apart.

    necrocode-api [--host H] [--port P] [--namespace NS] [--max-body-bytes N] [--audience A ...]
                  [--tls-cert-file CRT --tls-key-file KEY]

Settings are environment variables (NECROCODE_API_*, docs/api.md); flags override them.
"""

import argparse
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from fastapi import FastAPI

from necrocode import logs
from necrocode.api.app import create_app
from necrocode.api.settings import ApiSettings
from necrocode.api.tls import CertReloader
from necrocode.kube import Kube, load_credentials

if TYPE_CHECKING:
    import uvicorn

_LOG = logging.getLogger("necrocode.api")


def server_config(settings: ApiSettings, app: FastAPI) -> "uvicorn.Config":
    """uvicorn's settings: HTTPS when a certificate and key are given, else plain HTTP."""
    import uvicorn

    return uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, proxy_headers=True,
                          timeout_graceful_shutdown=10, ssl_certfile=settings.tls_cert_file,
                          ssl_keyfile=settings.tls_key_file)


def parse_settings(argv: list[str] | None) -> ApiSettings:
    """The environment's settings, overridden by the command line's flags."""
    env = ApiSettings.from_env()
    ap = argparse.ArgumentParser(prog="necrocode-api", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=env.host, help="address to listen on (NECROCODE_API_HOST)")
    ap.add_argument("--port", type=int, default=env.port, help="port (NECROCODE_API_PORT)")
    ap.add_argument("--namespace", default=env.namespace, help="default namespace (NECROCODE_API_NAMESPACE)")
    ap.add_argument("--log-format", choices=["json", "text"], default=env.log_format)
    ap.add_argument("--max-body-bytes", type=int, default=env.max_body_bytes, metavar="N",
                    help="larger request bodies are refused with 413 (NECROCODE_API_MAX_BODY_BYTES)")
    ap.add_argument("--audience", dest="audiences", action="append", default=None, metavar="AUDIENCE",
                    help="accept only tokens issued for this audience; repeatable "
                         "(NECROCODE_API_AUDIENCES, comma separated)")
    ap.add_argument("--tls-cert-file", default=env.tls_cert_file, metavar="PATH",
                    help="serve HTTPS with this PEM certificate chain (NECROCODE_API_TLS_CERT_FILE)")
    ap.add_argument("--tls-key-file", default=env.tls_key_file, metavar="PATH",
                    help="and this PEM private key (NECROCODE_API_TLS_KEY_FILE)")
    a = ap.parse_args(argv)
    if bool(a.tls_cert_file) != bool(a.tls_key_file):
        ap.error("--tls-cert-file and --tls-key-file go together")
    if a.max_body_bytes < 0:
        ap.error("--max-body-bytes must be >= 0")
    return replace(env, host=a.host, port=a.port, namespace=a.namespace, log_format=a.log_format,
                   max_body_bytes=a.max_body_bytes,
                   audiences=tuple(a.audiences) if a.audiences is not None else env.audiences,
                   tls_cert_file=a.tls_cert_file or None, tls_key_file=a.tls_key_file or None)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    settings = parse_settings(argv)
    logs.configure(settings.log_format, settings.log_level)
    kube = Kube(load_credentials(settings.kubeconfig), concurrency=settings.concurrency,
                timeout=settings.request_timeout)
    app = create_app(settings, kube)
    config = server_config(settings, app)
    config.load()  # builds the TLS context now, so the reloader holds the one uvicorn serves with
    if config.ssl is not None and settings.tls_cert_file and settings.tls_key_file:
        app.state.tls_reloader = CertReloader(config.ssl, settings.tls_cert_file, settings.tls_key_file,
                                              settings.tls_reload_seconds)
    _LOG.info("serving %s on %s:%s (default namespace %s, anonymous %s, audiences %s)",
              "https" if config.ssl else "http", settings.host, settings.port, settings.namespace,
              "allowed" if settings.allow_anonymous else "refused", ",".join(settings.audiences) or "the API server's")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
