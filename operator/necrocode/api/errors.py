"""The REST API's error answers, mapped once for every route.

Every error but 422 is `{"detail": "<one readable sentence>"}` (`schemas.ErrorBody`); a 422
names each refused field with the reason (`schemas.ValidationErrorBody`), whether FastAPI,
the body decoder or the Kubernetes API server refused it. Errors of the Kubernetes API become
the answer they mean to the caller (404, 403, 409, 422), anything else of it 503: the caller
may try again. Routes and the store raise `ApiAnswer`s for answers of their own.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from necrocode.api.schemas import ErrorBody, ValidationErrorBody
from necrocode.kube import ApiError, Conflict, Forbidden, Invalid, NotFound

_LOG = logging.getLogger("necrocode.api")


class ApiAnswer(Exception):
    """An error answer of the REST API: its status, and the sentence to answer."""

    status = 500


class ApiNotFound(ApiAnswer):
    """404: no such job, task or cancellation."""

    status = 404


class ApiFinished(ApiAnswer):
    """409: the cancellation has finished; nothing in it can change any more."""

    status = 409


# the error answers every /api route may give, for the OpenAPI document
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


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def body_error(msg: str, type_: str) -> JSONResponse:
    """A 422 for the body as a whole."""
    return JSONResponse(status_code=422, content={"detail": [{"loc": ["body"], "msg": msg, "type": type_}]})


def field_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [x if isinstance(x, int) else str(x) for x in e.get("loc") or ()]
        out.append({"loc": loc, "msg": str(e.get("msg") or "invalid"), "type": str(e.get("type") or "value_error")})
    return out


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": field_errors(exc.errors())}))


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 400:  # a body FastAPI could not even decode: a bad body too
        return body_error(str(exc.detail), "body_unreadable")
    return await http_exception_handler(request, exc)


async def kubernetes_error(request: Request, exc: ApiError) -> JSONResponse:
    if isinstance(exc, NotFound):
        return error(404, f"not found: {exc.message}")
    if isinstance(exc, Forbidden):
        return error(403, f"the API server refused: {exc.message}")
    if isinstance(exc, Conflict):
        return error(409, f"conflict: {exc.message}")
    if isinstance(exc, Invalid):
        return body_error(f"the API server refused it: {exc.message}", "kubernetes_invalid")
    _LOG.warning("Kubernetes API error: %s", exc)
    return error(503, f"the Kubernetes API is unavailable ({exc.status or exc.reason}); try again")


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    _LOG.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, "internal server error")


async def answer(request: Request, exc: ApiAnswer) -> JSONResponse:
    return error(exc.status, str(exc))


def install(app: FastAPI) -> None:
    """Answer every error of `app` as above (the most specific handler of an exception's class wins)."""
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, kubernetes_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(ApiAnswer, answer)  # type: ignore[arg-type]
