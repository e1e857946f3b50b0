"""The REST API's routes (docs/api.md): health, cancel a job or a task, a job's cancellation
status, the history, one cancellation, escalate one.

Each handler takes what it needs as a dependency: `Authorized(verb, plurals...)` authenticates
the caller (TokenReview) and checks RBAC for the namespace (SubjectAccessReview), and the
`Store`, `Authenticator` and settings are the app's (`app.state`, set by `app.create_app`).
Which records a job's status or the history shows, and in which order, is `necrocode.records`,
the CLI's too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from necrocode import records
from necrocode.api.auth import Authenticator, Caller
from necrocode.api.errors import ERRORS, NOT_FOUND, ApiNotFound
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
)
from necrocode.api.settings import ApiSettings
from necrocode.api.store import Store
from necrocode.model import JOB_CANCELLATION, PLURAL, TASK_CANCELLATION, CancellationResult, Phase

Obj = dict[str, Any]
_LOG = logging.getLogger("necrocode.api")
JOBS, TASKS = PLURAL[JOB_CANCELLATION], PLURAL[TASK_CANCELLATION]
FINISHED_HEADER = "NecroCode-Finished"

router = APIRouter()


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


# ----------------------------------------------------------------------------- dependencies
def settings_of(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def auth_of(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(store_of)]
BEARER = HTTPBearer(auto_error=False, description="A Kubernetes bearer token (e.g. a ServiceAccount token).")


async def authenticated(request: Request, auth: Annotated[Authenticator, Depends(auth_of)],
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> Caller:
    client = request.client.host if request.client else ""
    return await auth.authenticate(credentials.credentials if credentials else None, client)


@dataclass(frozen=True)
class Access:
    """An authenticated, authorized request: who, and in which namespace."""

    caller: Caller
    namespace: str


class Authorized:
    """The dependency of a route: the caller, allowed `verb` on each of `plurals` in the
    request's namespace (`?namespace=`, else the server's)."""

    def __init__(self, verb: str, *plurals: str):
        self.verb, self.plurals = verb, plurals

    async def __call__(self, caller: Annotated[Caller, Depends(authenticated)],
                       auth: Annotated[Authenticator, Depends(auth_of)],
                       settings: Annotated[ApiSettings, Depends(settings_of)],
                       namespace: NamespaceQuery = None) -> Access:
        ns = namespace or settings.namespace
        for plural in self.plurals:
            await auth.authorize(caller, self.verb, plural, ns)
        return Access(caller, ns)


# ----------------------------------------------------------------------------- answers
def location(name: str, namespace: str) -> str:
    return f"/api/cancellations/{quote(name, safe='')}?{urlencode({'namespace': namespace})}"


def answered(obj: Obj, response: Response) -> CancellationResult:
    """The cancellation as answered, and whether it had finished (FINISHED_HEADER)."""
    result = records.result_of(obj)
    response.headers[FINISHED_HEADER] = "true" if result.status.terminal else "false"
    return result


async def answer_created(store: Store, obj: Obj, ns: str, response: Response, wait: bool,
                         seconds: float) -> CancellationResult:
    if wait:
        obj = await store.follow(obj, ns, seconds)
    result = answered(obj, response)
    response.headers["Location"] = location(result.name, ns)
    _LOG.info("cancellation %s/%s created", ns, result.name)
    return result


# ----------------------------------------------------------------------------- routes
@router.get("/healthz", response_model=Health, tags=["health"], summary="Liveness: the process serves HTTP",
            operation_id="healthz")
async def healthz() -> Health:
    return Health()


@router.post("/api/jobs/{job_id}/cancel", status_code=201, response_model=CancellationResult,
             response_model_exclude_none=True, responses={**ERRORS, **CREATED}, tags=["cancellations"],
             summary="Cancel a job (creates a JobCancellation)", operation_id="cancelJob")
async def cancel_job(job_id: JobPath, response: Response, store: StoreDep,
                     access: Annotated[Access, Depends(Authorized("create", JOBS))],
                     body: Annotated[JobCancelRequest | None, Body()] = None,
                     wait: WaitQuery = False, wait_timeout: TimeoutQuery = WAIT_TIMEOUT_DEFAULT) -> CancellationResult:
    """Validate, check that the job exists (404 before anything is created), create a
    JobCancellation recording the caller (`requestedBy`, and the requester annotations),
    and return it with its status.
    With `wait=true`, answer once it has finished or `timeout` seconds passed."""
    req = body or JobCancelRequest()
    ns = access.namespace
    spec = req.spec(job_id, access.caller.username)
    await store.find_job(ns, job_id)
    obj = await store.create(JOB_CANCELLATION, ns, access.caller, job_id, None, spec)
    return await answer_created(store, obj, ns, response, wait, wait_timeout)


@router.post("/api/tasks/{task_id}/cancel", status_code=201, response_model=CancellationResult,
             response_model_exclude_none=True, responses={**ERRORS, **CREATED}, tags=["cancellations"],
             summary="Cancel one task of a job (creates a TaskCancellation)", operation_id="cancelTask")
async def cancel_task(task_id: TaskPath, body: Annotated[TaskCancelRequest, Body()], response: Response,
                      store: StoreDep, access: Annotated[Access, Depends(Authorized("create", TASKS))],
                      wait: WaitQuery = False, wait_timeout: TimeoutQuery = WAIT_TIMEOUT_DEFAULT) -> CancellationResult:
    """The same for task `task_id` of job `jobId`: 404 when the job or the task does not
    exist; `cascade=false` blocks the task's dependents instead of cancelling them."""
    ns = access.namespace
    spec = body.spec(task_id, access.caller.username)
    await store.find_job(ns, body.job_id)
    await store.find_task(ns, body.job_id, task_id)
    obj = await store.create(TASK_CANCELLATION, ns, access.caller, body.job_id, task_id, spec)
    return await answer_created(store, obj, ns, response, wait, wait_timeout)


@router.get("/api/jobs/{job_id}/cancellation-status", response_model=CancellationResult,
            response_model_exclude_none=True, responses={**ERRORS, **NOT_FOUND}, tags=["cancellations"],
            summary="The job's current or latest cancellation", operation_id="getCancellationStatus")
async def cancellation_status(job_id: JobPath, store: StoreDep,
                              access: Annotated[Access, Depends(Authorized("list", JOBS, TASKS))]
                              ) -> CancellationResult:
    """The cancellation of the job still going on (the newest, if several), else the newest
    one (JobCancellation or TaskCancellation): phase, every step, progress counts, errors."""
    current = records.current(records.of_job(await store.list_cancellations(access.namespace, job_id), job_id))
    if current is None:
        raise ApiNotFound(f"no cancellation of job {job_id} in namespace {access.namespace}")
    return records.result_of(current)


@router.get("/api/cancellations", response_model=CancellationPage, response_model_exclude_none=True,
            responses=ERRORS, tags=["cancellations"], summary="History of cancellations, newest first",
            operation_id="listCancellations")
async def history(store: StoreDep, access: Annotated[Access, Depends(Authorized("list", JOBS, TASKS))],
                  limit: Annotated[int, Query(ge=LIMIT_MIN, le=LIMIT_MAX, description="Page size.")] = LIMIT_DEFAULT,
                  offset: Annotated[int, Query(ge=0, le=10**9, description="How many to skip.")] = 0,
                  job_id: Annotated[str | None, Query(min_length=1, max_length=JOB_MAX, pattern=JOB_PATTERN,
                                                      description="Only this job's cancellations.")] = None,
                  status: Annotated[Phase | None, Query(description="Only cancellations in this phase.")] = None,
                  ) -> CancellationPage:
    """JobCancellations and TaskCancellations of the namespace, newest first (creation time,
    then name), with the total count over all pages."""
    found = records.history(await store.list_cancellations(access.namespace, job_id), job_id, status)
    return CancellationPage(items=[records.result_of(o) for o in found[offset:offset + limit]],
                            total=len(found), limit=limit, offset=offset)


@router.get("/api/cancellations/{name}", response_model=CancellationResult, response_model_exclude_none=True,
            responses={**ERRORS, **NOT_FOUND}, tags=["cancellations"], summary="One cancellation, by name",
            operation_id="getCancellation")
async def get_cancellation(name: NamePath, store: StoreDep,
                           access: Annotated[Access, Depends(Authorized("get", JOBS, TASKS))]) -> CancellationResult:
    """A JobCancellation or, if there is none of that name, a TaskCancellation (the
    `Location` of a POST's answer)."""
    return records.result_of(await store.find_cancellation(access.namespace, name))


@router.post("/api/cancellations/{name}/escalate", response_model=CancellationResult,
             response_model_exclude_none=True, responses={**ERRORS, **NOT_FOUND, **ESCALATE}, tags=["cancellations"],
             summary="Escalate a running cancellation to force (spec.force: true)",
             operation_id="escalateCancellation")
async def escalate(name: NamePath, response: Response, store: StoreDep,
                   auth: Annotated[Authenticator, Depends(auth_of)],
                   access: Annotated[Access, Depends(Authorized("get", JOBS, TASKS))],
                   wait: WaitQuery = False, wait_timeout: TimeoutQuery = WAIT_TIMEOUT_DEFAULT) -> CancellationResult:
    """Set `spec.force` of a pending or running cancellation to true (the one change of a spec
    the CRD allows): the operator force-deletes its remaining runners at once. Needs `patch`
    on the cancellation's kind. The caller is recorded as who escalated (the annotation
    `necrocode.io/force-requester`, `status.escalatedByUser`, an `Escalated` Event). One
    already forced is answered as it is; one that has finished is 409.
    With `wait=true`, answer once it has finished or `timeout` seconds passed."""
    ns = access.namespace
    obj = await store.find_cancellation(ns, name)
    await auth.authorize(access.caller, "patch", PLURAL[str(obj["kind"])], ns)
    if not (obj.get("spec") or {}).get("force"):
        obj = await store.escalate(obj, ns, access.caller.username)
        _LOG.info("cancellation %s/%s escalated to force for %s", ns, name, access.caller.username)
    if wait:
        obj = await store.follow(obj, ns, wait_timeout)
    return answered(obj, response)
