"""The REST API's ASGI app: what it holds (`app.state`: settings, the Kubernetes client, the
authenticator, the store), its lifespan, the body limit, the error answers and the routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from necrocode.api import errors, routes
from necrocode.api.auth import Authenticator
from necrocode.api.limits import BodyLimit, FailureLimiter
from necrocode.api.settings import ApiSettings
from necrocode.api.store import Store
from necrocode.api.tls import CertReloader
from necrocode.kube import Kube


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Re-read the TLS certificate while serving (when `server.main` set a reloader); close
    the Kubernetes client at shutdown."""
    reloader: CertReloader | None = getattr(app.state, "tls_reloader", None)
    task = asyncio.create_task(reloader.run(), name="tls-reload") if reloader else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
        await app.state.kube.close()


def create_app(settings: ApiSettings, kube: Kube) -> FastAPI:
    """The ASGI app; `kube` talks to the API server with the server's own credentials (closed
    when the app shuts down)."""
    auth = Authenticator(kube, allow_anonymous=settings.allow_anonymous, cache_seconds=settings.token_cache_seconds,
                         cache_size=settings.token_cache_size, audiences=settings.audiences,
                         failures=FailureLimiter(settings.auth_failure_burst, settings.auth_failure_per_second,
                                                 settings.auth_failure_clients),
                         rejected_seconds=settings.rejected_cache_seconds, rejected_size=settings.rejected_cache_size)
    try:
        app_version = version("necrocode-cancel")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        app_version = "0"
    app = FastAPI(
        title="NecroCode cancellation API",
        version=app_version,
        description="Cancel NecroCode jobs and tasks and follow their cancellations. Every /api call needs a "
                    "Kubernetes bearer token; Kubernetes RBAC on jobcancellations/taskcancellations.necrocode.io "
                    "decides what it may do. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.kube, app.state.auth = settings, kube, auth
    app.state.store = Store(kube, settings.poll_seconds)
    # outermost but for Starlette's error middleware: an oversized body is refused before routing,
    # and so before the authentication dependency and its TokenReview
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    app.include_router(routes.router)
    return app
