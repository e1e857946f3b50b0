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
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Body, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from necrocode import logs, records
from necrocode.api.auth import Authenticator, Caller
from necrocode.api.limits import MAX_BODY_DEFAULT, BodyLimit, FailureLimiter
from necrocode.api.schemas import (
    JOB_MAX,
    JOB_PATTERN,
    LIMIT_DEFAULT,
    LIMIT_MAX,
    LIMIT_MIN,
    NAME_PATTERN,
    NAMESPACE_MAX,
    NAMESPACE_PATTERN,
    TASK_MAX,
    TASK_PATTERN,
    WAIT_TIMEOUT_DEFAULT,
    WAIT_TIMEOUT_MAX,
    WAIT_TIMEOUT_MIN,
    CancellationPage,
    ErrorBody,
    Health,
    JobCancelRequest,
    TaskCancelRequest,
    ValidationErrorBody,
)
from necrocode.api.tls import CertReloader
from necrocode.kube import AlreadyExists, ApiError, Conflict, Forbidden, Invalid, Kube, NotFound, load_credentials, nc_path
from necrocode.model import (
    ANNOTATION_FORCE_REQUESTER,
    ANNOTATION_REQUESTER,
    ANNOTATION_REQUESTER_GROUPS,
    API_VERSION,
    JOB_CANCELLATION,
    PLURAL,
    TASK_CANCELLATION,
    CancellationResult,
    Phase,
)
from necrocode.naming import cancellation_labels, generate_name

if TYPE_CHECKING:
    import uvicorn

Obj = dict[str, Any]
_LOG = logging.getLogger("necrocode.api")
JOBS, TASKS = PLURAL[JOB_CANCELLATION], PLURAL[TASK_CANCELLATION]
FINISHED_HEADER = "NecroCode-Finished"


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, "true" if default else "false").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> tuple[str, ...]:
    """A comma-separated list; empty entries dropped."""
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


@dataclass(frozen=True)
class ApiSettings:
    host: str = "0.0.0.0"
    port: int = 8000
    namespace: str = "default"
    """Namespace of requests that name none (`?namespace=`)."""
    allow_anonymous: bool = False
    """Serve callers without a token as system:anonymous (still subject to RBAC)."""
    token_cache_seconds: float = 10.0
    token_cache_size: int = 1024
    max_body_bytes: int = MAX_BODY_DEFAULT
    """Larger request bodies are answered 413 before authentication, unread."""
    audiences: tuple[str, ...] = ()
    """TokenReview audiences; a token must have been issued for one of them (empty: the API
    server's own audiences)."""
    auth_failure_burst: int = 10
    auth_failure_per_second: float = 1.0
    """Per client IP: this many failed authentications at once, then this many per second; more is 429."""
    auth_failure_clients: int = 10000
    """At most this many clients are tracked (least recently seen dropped first)."""
    rejected_cache_seconds: float = 60.0
    rejected_cache_size: int = 4096
    """A rejected token (by hash) is answered 401 without a TokenReview for this long."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    """Serve HTTPS with this certificate chain and key (PEM); re-read when they change."""
    tls_reload_seconds: float = 60.0
    poll_seconds: float = 0.5
    """How often `?wait=true` reads the cancellation."""
    request_timeout: float = 30.0
    concurrency: int = 50
    kubeconfig: str | None = None
    log_format: str = "json"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> "ApiSettings":
        e = os.environ.get
        return cls(
            host=e("NECROCODE_API_HOST", "0.0.0.0"),
            port=int(e("NECROCODE_API_PORT", "8000")),
            namespace=e("NECROCODE_API_NAMESPACE", "default"),
            allow_anonymous=_env_bool("NECROCODE_API_ALLOW_ANONYMOUS", False),
            token_cache_seconds=float(e("NECROCODE_API_TOKEN_CACHE_SECONDS", "10")),
            token_cache_size=int(e("NECROCODE_API_TOKEN_CACHE_SIZE", "1024")),
            max_body_bytes=int(e("NECROCODE_API_MAX_BODY_BYTES", str(MAX_BODY_DEFAULT))),
            audiences=_env_list("NECROCODE_API_AUDIENCES"),
            auth_failure_burst=int(e("NECROCODE_API_AUTH_FAILURE_BURST", "10")),
            auth_failure_per_second=float(e("NECROCODE_API_AUTH_FAILURE_PER_SECOND", "1")),
            auth_failure_clients=int(e("NECROCODE_API_AUTH_FAILURE_CLIENTS", "10000")),
            rejected_cache_seconds=float(e("NECROCODE_API_REJECTED_CACHE_SECONDS", "60")),
            rejected_cache_size=int(e("NECROCODE_API_REJECTED_CACHE_SIZE", "4096")),
            tls_cert_file=e("NECROCODE_API_TLS_CERT_FILE") or None,
            tls_key_file=e("NECROCODE_API_TLS_KEY_FILE") or None,
            tls_reload_seconds=float(e("NECROCODE_API_TLS_RELOAD_SECONDS", "60")),
            poll_seconds=float(e("NECROCODE_API_POLL_SECONDS", "0.5")),
            request_timeout=float(e("NECROCODE_REQUEST_TIMEOUT_SECONDS", "30")),
            concurrency=int(e("NECROCODE_CONCURRENCY", "50")),
            kubeconfig=e("NECROCODE_KUBECONFIG") or None,
            log_format=e("NECROCODE_LOG_FORMAT", "json"),
            log_level=e("NECROCODE_LOG_LEVEL", "INFO"),
        )


@dataclass(frozen=True)
class Access:
    """An authenticated, authorized request: who, and in which namespace."""

    caller: Caller
    namespace: str


# ----------------------------------------------------------------------------- resources
def result_of(obj: Obj) -> CancellationResult:
    return CancellationResult.from_object(obj)


def location(name: str, namespace: str) -> str:
    return f"/api/cancellations/{quote(name, safe='')}?{urlencode({'namespace': namespace})}"


def requester_annotations(caller: Caller) -> dict[str, str]:
    """Who asked, for the API server's requester policy (deploy/requester-policy.yaml). The
    policy overwrites these with the creating identity, here this server's own, unless that
    identity may `vouch` for cancellations; the chart grants it, so the caller is recorded."""
    return {ANNOTATION_REQUESTER: caller.username, ANNOTATION_REQUESTER_GROUPS: ",".join(caller.groups)}


# ----------------------------------------------------------------------------- parameters
NamespaceQuery = Annotated[str | None, Query(
    min_length=1, max_length=NAMESPACE_MAX, pattern=NAMESPACE_PATTERN,
    description="Namespace of the cancellations (default: the server's, NECROCODE_API_NAMESPACE).")]
JobPath = Annotated[str, Path(min_length=1, max_length=JOB_MAX, pattern=JOB_PATTERN,
                              description="The job: an AgentJob's name.")]
TaskPath = Annotated[str, Path(min_length=1, max_length=TASK_MAX, pattern=TASK_PATTERN,
                               description="The task's id within its job (AgentTask spec.taskId).")]
NamePath = Annotated[str, Path(min_length=1, max_length=JOB_MAX, pattern=NAME_PATTERN,
                               description="The cancellation's name (JobCancellation or TaskCancellation).")]
WaitQuery = Annotated[bool, Query(description="Answer once the cancellation finished or `timeout` passed.")]
TimeoutQuery = Annotated[float, Query(alias="timeout", ge=WAIT_TIMEOUT_MIN, le=WAIT_TIMEOUT_MAX,
                                      description="With wait=true: the longest to wait, in seconds.")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No bearer token, or one the API server does not accept."},
    403: {"model": ErrorBody, "description": "Kubernetes RBAC does not allow it; names the missing permission."},
    422: {"model": ValidationErrorBody, "description": "A bad body field or parameter, with the field and why."},
    429: {"model": ErrorBody, "description": "Too many failed authentications from this client; see Retry-After.",
          "headers": {"Retry-After": {"description": "Seconds to wait before trying again.",
                                      "schema": {"type": "string"}}}},
    503: {"model": ErrorBody, "description": "The Kubernetes API server cannot be reached or failed."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such job, task or cancellation."}}
CREATED_HEADERS = {
    "Location": {"description": "Where to read the cancellation (GET).", "schema": {"type": "string"}},
    FINISHED_HEADER: {"description": "`true` when the cancellation had finished when this answer was sent.",
                      "schema": {"type": "string", "enum": ["true", "false"]}},
}
LINKS = {
    "getCancellation": {"operationId": "getCancellation", "description": "The cancellation just created.",
                        "parameters": {"name": "$response.body#/name", "namespace": "$response.body#/namespace"}},
    "getCancellationStatus": {"operationId": "getCancellationStatus", "description": "The job's cancellation status.",
                              "parameters": {"job_id": "$response.body#/jobName",
                                             "namespace": "$response.body#/namespace"}},
}
ESCALATE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Escalated (or already forced); the cancellation and its status.",
          "headers": {FINISHED_HEADER: CREATED_HEADERS[FINISHED_HEADER]}},
    409: {"model": ErrorBody, "description": "The cancellation has finished; nothing was changed."},
}
CREATED: dict[int | str, dict[str, Any]] = {
    201: {"description": "Created; the cancellation and its status.", "headers": CREATED_HEADERS, "links": LINKS},
    404: {"model": ErrorBody, "description": "No such job (or task); nothing was created."},
    409: {"model": ErrorBody, "description": "A conflict with what is stored; nothing was created."},
    413: {"model": ErrorBody, "description": "The body is larger than the server's limit (answered before "
                                             "authentication, unread); nothing was created."},
}


def _field_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [x if isinstance(x, int) else str(x) for x in e.get("loc") or ()]
        out.append({"loc": loc, "msg": str(e.get("msg") or "invalid"), "type": str(e.get("type") or "value_error")})
    return out


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


# ----------------------------------------------------------------------------- the app
def create_app(settings: ApiSettings, kube: Kube) -> FastAPI:
    """The ASGI app; `kube` talks to the API server with the server's own credentials (closed
    when the app shuts down)."""
    auth = Authenticator(kube, allow_anonymous=settings.allow_anonymous, cache_seconds=settings.token_cache_seconds,
                         cache_size=settings.token_cache_size, audiences=settings.audiences,
                         failures=FailureLimiter(settings.auth_failure_burst, settings.auth_failure_per_second,
                                                 settings.auth_failure_clients),
                         rejected_seconds=settings.rejected_cache_seconds, rejected_size=settings.rejected_cache_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reloader: CertReloader | None = getattr(app.state, "tls_reloader", None)
        task = asyncio.create_task(reloader.run(), name="tls-reload") if reloader else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            await kube.close()

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
    # outermost but for Starlette's error middleware: an oversized body is refused before routing,
    # and so before the authentication dependency and its TokenReview
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="A Kubernetes bearer token (e.g. a ServiceAccount token).")

    # ---------------------------------------------------------------- errors, mapped once
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=jsonable_encoder({"detail": _field_errors(exc.errors())}))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # a body FastAPI could not even decode: a bad body too
            return JSONResponse(status_code=422, content={"detail": [
                {"loc": ["body"], "msg": str(exc.detail), "type": "body_unreadable"}]})
        return await http_exception_handler(request, exc)

    @app.exception_handler(ApiError)
    async def kubernetes_error(request: Request, exc: ApiError) -> JSONResponse:
        if isinstance(exc, NotFound):
            return _error(404, f"not found: {exc.message}")
        if isinstance(exc, Forbidden):
            return _error(403, f"the API server refused: {exc.message}")
        if isinstance(exc, Conflict):
            return _error(409, f"conflict: {exc.message}")
        if isinstance(exc, Invalid):
            return JSONResponse(status_code=422, content={"detail": [
                {"loc": ["body"], "msg": f"the API server refused it: {exc.message}", "type": "kubernetes_invalid"}]})
        _LOG.warning("Kubernetes API error: %s", exc)
        return _error(503, f"the Kubernetes API is unavailable ({exc.status or exc.reason}); try again")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _LOG.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal server error")

    # ---------------------------------------------------------------- authentication and RBAC
    async def authenticated(request: Request,
                            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> Caller:
        client = request.client.host if request.client else ""
        return await auth.authenticate(credentials.credentials if credentials else None, client)

    def authorized(verb: str, *plurals: str) -> Callable[..., Awaitable[Access]]:
        async def dependency(caller: Annotated[Caller, Depends(authenticated)],
                             namespace: NamespaceQuery = None) -> Access:
            ns = namespace or settings.namespace
            for plural in plurals:
                await auth.authorize(caller, verb, plural, ns)
            return Access(caller, ns)
        return dependency

    # ---------------------------------------------------------------- helpers
    async def find_job(ns: str, job_id: str) -> None:
        try:
            await kube.get(nc_path(ns, "agentjobs", job_id))
        except NotFound:
            raise ApiNotFound(f"job {job_id} not found in namespace {ns}") from None

    async def find_task(ns: str, job_id: str, task_id: str) -> None:
        tasks, _ = await kube.list_all(nc_path(ns, "agenttasks"), label_selector=records.task_selector(job_id, task_id))
        if not records.find_tasks(tasks, job_id, task_id):
            raise ApiNotFound(f"task {task_id} of job {job_id} not found in namespace {ns}")

    async def create(kind: str, access: Access, job_id: str, task_id: str | None, spec: Obj) -> Obj:
        ns = access.namespace
        for attempt in range(3):
            body = {"apiVersion": API_VERSION, "kind": kind,
                    "metadata": {"name": generate_name(job_id, task_id), "labels": cancellation_labels(job_id, task_id),
                                 "annotations": requester_annotations(access.caller)},
                    "spec": spec}
            try:
                return await kube.create(nc_path(ns, PLURAL[kind]), body)
            except AlreadyExists:  # same second, same 4 hex digits: draw again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def follow(obj: Obj, ns: str, seconds: float) -> Obj:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        path = nc_path(ns, PLURAL[str(obj.get("kind") or JOB_CANCELLATION)], obj["metadata"]["name"])
        while not result_of(obj).status.terminal:
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(settings.poll_seconds, left))
            obj = await kube.get(path)
        return obj

    async def answer_created(obj: Obj, ns: str, response: Response, wait: bool, seconds: float) -> CancellationResult:
        if wait:
            obj = await follow(obj, ns, seconds)
        result = result_of(obj)
        response.headers["Location"] = location(result.name, ns)
        response.headers[FINISHED_HEADER] = "true" if result.status.terminal else "false"
        _LOG.info("cancellation %s/%s created", ns, result.name)
        return result

    async def list_cancellations(ns: str, job_id: str | None) -> list[Obj]:
        selector = records.job_selector(job_id) if job_id else None
        found: list[Obj] = []
        for kind, plural in PLURAL.items():
            items, _ = await kube.list_all(nc_path(ns, plural), label_selector=selector)
            for o in items:
                o.setdefault("kind", kind)
            found += items
        return records.of_job(found, job_id) if job_id else records.newest_first(found)

    # ---------------------------------------------------------------- routes
    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness: the process serves HTTP",
             operation_id="healthz")
    async def healthz() -> Health:
        return Health()

    @app.post("/api/jobs/{job_id}/cancel", status_code=201, response_model=CancellationResult,
              response_model_exclude_none=True, responses={**ERRORS, **CREATED}, tags=["cancellations"],
              summary="Cancel a job (creates a JobCancellation)", operation_id="cancelJob")
    async def cancel_job(job_id: JobPath, response: Response,
                         access: Annotated[Access, Depends(authorized("create", JOBS))],
                         body: Annotated[JobCancelRequest | None, Body()] = None,
                         wait: WaitQuery = False, wait_timeout: TimeoutQuery = WAIT_TIMEOUT_DEFAULT) -> CancellationResult:
        """Validate, check that the job exists (404 before anything is created), create a
        JobCancellation recording the caller (`requestedBy`, and the requester annotations),
        and return it with its status.
        With `wait=true`, answer once it has finished or `timeout` seconds passed."""
        req = body or JobCancelRequest()
        ns = access.namespace
        spec = req.spec(job_id, access.caller.username)
        await find_job(ns, job_id)
        obj = await create(JOB_CANCELLATION, access, job_id, None, spec)
        return await answer_created(obj, ns, response, wait, wait_timeout)

    @app.post("/api/tasks/{task_id}/cancel", status_code=201, response_model=CancellationResult,
              response_model_exclude_none=True, responses={**ERRORS, **CREATED}, tags=["cancellations"],
              summary="Cancel one task of a job (creates a TaskCancellation)", operation_id="cancelTask")
    async def cancel_task(task_id: TaskPath, body: Annotated[TaskCancelRequest, Body()], response: Response,
                          access: Annotated[Access, Depends(authorized("create", TASKS))],
                          wait: WaitQuery = False, wait_timeout: TimeoutQuery = WAIT_TIMEOUT_DEFAULT) -> CancellationResult:
        """The same for task `task_id` of job `jobId`: 404 when the job or the task does not
        exist; `cascade=false` blocks the task's dependents instead of cancelling them."""
        ns = access.namespace
        spec = body.spec(task_id, access.caller.username)
        await find_job(ns, body.job_id)
        await find_task(ns, body.job_id, task_id)
        obj = await create(TASK_CANCELLATION, access, body.job_id, task_id, spec)
        return await answer_created(obj, ns, response, wait, wait_timeout)

    @app.get("/api/jobs/{job_id}/cancellation-status", response_model=CancellationResult,
             response_model_exclude_none=True, responses={**ERRORS, **NOT_FOUND}, tags=["cancellations"],
             summary="The job's current or latest cancellation", operation_id="getCancellationStatus")
    async def cancellation_status(job_id: JobPath,
                                  access: Annotated[Access, Depends(authorized("list", JOBS, TASKS))]
                                  ) -> CancellationResult:
        """The cancellation of the job still going on (the newest, if several), else the newest
        one (JobCancellation or TaskCancellation): phase, every step, progress counts, errors."""
        current = records.current(await list_cancellations(access.namespace, job_id))
        if current is None:
            raise ApiNotFound(f"no cancellation of job {job_id} in namespace {access.namespace}")
        return result_of(current)

    @app.get("/api/cancellations", response_model=CancellationPage, response_model_exclude_none=True,
             responses=ERRORS, tags=["cancellations"], summary="History of cancellations, newest first",
             operation_id="listCancellations")
    async def history(access: Annotated[Access, Depends(authorized("list", JOBS, TASKS))],
                      limit: Annotated[int, Query(ge=LIMIT_MIN, le=LIMIT_MAX, description="Page size.")] = LIMIT_DEFAULT,
                      offset: Annotated[int, Query(ge=0, le=10**9, description="How many to skip.")] = 0,
                      job_id: Annotated[str | None, Query(min_length=1, max_length=JOB_MAX, pattern=JOB_PATTERN,
                                                          description="Only this job's cancellations.")] = None,
                      status: Annotated[Phase | None, Query(description="Only cancellations in this phase.")] = None,
                      ) -> CancellationPage:
        """JobCancellations and TaskCancellations of the namespace, newest first (creation time,
        then name), with the total count over all pages."""
        results = [result_of(o) for o in await list_cancellations(access.namespace, job_id)]
        if status is not None:
            results = [r for r in results if r.status.phase == status]
        return CancellationPage(items=results[offset:offset + limit], total=len(results), limit=limit, offset=offset)

    async def find_cancellation(ns: str, name: str) -> Obj:
        """A JobCancellation or, if there is none of that name, a TaskCancellation."""
        for kind, plural in PLURAL.items():
            try:
                obj = await kube.get(nc_path(ns, plural, name))
            except NotFound:
                continue
            obj.setdefault("kind", kind)
            return obj
        raise ApiNotFound(f"cancellation {name} not found in namespace {ns}")

    @app.get("/api/cancellations/{name}", response_model=CancellationResult, response_model_exclude_none=True,
             responses={**ERRORS, **NOT_FOUND}, tags=["cancellations"], summary="One cancellation, by name",
             operation_id="getCancellation")
    async def get_cancellation(name: NamePath,
                               access: Annotated[Access, Depends(authorized("get", JOBS, TASKS))]) -> CancellationResult:
        """A JobCancellation or, if there is none of that name, a TaskCancellation (the
        `Location` of a POST's answer)."""
        return result_of(await find_cancellation(access.namespace, name))

    @app.post("/api/cancellations/{name}/escalate", response_model=CancellationResult,
              response_model_exclude_none=True, responses={**ERRORS, **NOT_FOUND, **ESCALATE}, tags=["cancellations"],
              summary="Escalate a running cancellation to force (spec.force: true)",
              operation_id="escalateCancellation")
    async def escalate(name: NamePath, response: Response,
                       access: Annotated[Access, Depends(authorized("get", JOBS, TASKS))],
                       wait: WaitQuery = False, wait_timeout: TimeoutQuery = WAIT_TIMEOUT_DEFAULT) -> CancellationResult:
        """Set `spec.force` of a pending or running cancellation to true (the one change of a spec
        the CRD allows): the operator force-deletes its remaining runners at once. Needs `patch`
        on the cancellation's kind. The caller is recorded as who escalated (the annotation
        `necrocode.io/force-requester`, `status.escalatedByUser`, an `Escalated` Event). One
        already forced is answered as it is; one that has finished is 409.
        With `wait=true`, answer once it has finished or `timeout` seconds passed."""
        ns = access.namespace
        obj = await find_cancellation(ns, name)
        kind = str(obj["kind"])
        await auth.authorize(access.caller, "patch", PLURAL[kind], ns)
        finished = f"{kind.lower()}/{name} has finished; there is nothing left to escalate"
        if not (obj.get("spec") or {}).get("force"):
            if result_of(obj).status.terminal:
                raise ApiFinished(finished)
            try:
                obj = await kube.merge_patch(nc_path(ns, PLURAL[kind], name), {
                    "metadata": {"annotations": {ANNOTATION_FORCE_REQUESTER: access.caller.username}},
                    "spec": {"force": True}})
            except Invalid:  # the CRD refuses: it finished meanwhile
                raise ApiFinished(finished) from None
            _LOG.info("cancellation %s/%s escalated to force for %s", ns, name, access.caller.username)
        if wait:
            obj = await follow(obj, ns, wait_timeout)
        result = result_of(obj)
        response.headers[FINISHED_HEADER] = "true" if result.status.terminal else "false"
        return result

    @app.exception_handler(ApiAnswer)
    async def answer(request: Request, exc: ApiAnswer) -> JSONResponse:
        return _error(exc.status, str(exc))

    return app


class ApiAnswer(Exception):
    """An error answer of the REST API: its status, and the sentence to answer."""

    status = 500


class ApiNotFound(ApiAnswer):
    """404: no such job, task or cancellation."""

    status = 404


class ApiFinished(ApiAnswer):
    """409: the cancellation has finished; nothing in it can change any more."""

    status = 409


# ----------------------------------------------------------------------------- process
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
