"""The edge where errors become problem JSON (RFC 9457): every WarblerError, every validation
error, every HTTP error Starlette raises (404, 405), and last anything unexpected (logged, 500).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.request_ids import HEADER as REQUEST_ID_HEADER
from serve.request_ids import request_id_of
from warbler import logs, metrics
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    PROBLEM_CONTENT_TYPE,
    ProblemPublic,
    plain_message,
    safe_text,
    summarize_errors,
)

logger = logging.getLogger(__name__)

_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.BAD_REQUEST,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
    422: ErrorCode.VALIDATION,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


def problem_response(exc: WarblerError, request: Request) -> Response:
    """The problem JSON response for an error raised while serving ``request``."""
    metrics.ERRORS.child(exc.code.value).inc()
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    retry_ms = exc.details.get("retry_after_ms")
    if exc.status in (429, 503) and isinstance(retry_ms, int):
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
    body = exc.to_problem(instance=request.url.path)
    rid = request_id_of(request.scope)
    if rid is not None:
        body["request_id"] = rid
        # A 500 is sent from outside serve.request_ids.RequestIds: it carries the id itself.
        headers[REQUEST_ID_HEADER] = rid
    return JSONResponse(
        body,
        status_code=exc.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def validation_error(errors: list[Any]) -> WarblerError:
    """A VALIDATION WarblerError from pydantic/FastAPI error dicts, with a readable summary."""
    cleaned = [
        {
            "loc": [safe_text(str(p))[:64] for p in err.get("loc", ())],
            "msg": plain_message(err),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]
    if any(err["type"] == "json_invalid" for err in cleaned):
        # FastAPI says "body.1: JSON decode error"; the position is in details.
        return WarblerError(
            ErrorCode.VALIDATION, "the body is not valid JSON", details={"errors": cleaned}
        )
    summary = summarize_errors(cleaned, default_loc="request")
    return WarblerError(ErrorCode.VALIDATION, summary, details={"errors": cleaned})


async def _on_warbler_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WarblerError)
    if exc.status >= 500:
        logger.warning("%s %s failed: %r", request.method, request.url.path, exc)
    return problem_response(exc, request)


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError | ValidationError)
    return problem_response(validation_error(list(exc.errors())), request)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST)
    error = WarblerError(code, str(exc.detail), status=exc.status_code)
    response = problem_response(error, request)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette runs this handler outside the app's middlewares: the request's log context
    # is gone by now, so bind its id again.
    with logs.context(request_id=request_id_of(request.scope)):
        logger.error(
            "unexpected error serving %s %s", request.method, request.url.path, exc_info=exc
        )
    return problem_response(WarblerError(ErrorCode.INTERNAL, "internal server error"), request)


_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request (malformed input)",
    401: "No valid access token (or wrong credentials)",
    403: "Not allowed (not a member, or not an admin)",
    404: "No such thing (or not visible to the caller)",
    409: "Conflict (the name is taken, ...)",
    413: "Request body too large",
    414: "URL too long",
    422: "Validation error",
    429: "Too many attempts: retry after the Retry-After header's seconds",
    431: "Request headers too large",
    503: "A dependency is unavailable: retry",
}
# Any route can answer these: the edge limits (serve.middleware) and input validation.
_EVERY_ROUTE = (400, 413, 414, 422, 431)
_PROBLEM_REF = "#/components/schemas/ProblemPublic"
_FASTAPI_VALIDATION_REF = "#/components/schemas/HTTPValidationError"


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a router or route: each status answers problem JSON (the
    content type is set to application/problem+json by ``install_problem_openapi``)."""
    return {s: {"model": ProblemPublic, "description": _DESCRIPTIONS[s]} for s in statuses}


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _PROBLEM_REF}}}


def _declare_problems(schema: dict[str, Any]) -> None:
    # FastAPI files every response model under application/json and adds its own 422
    # (HTTPValidationError); ours are problem JSON, on every route.
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for code in _EVERY_ROUTE:
                responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
            for status, response in responses.items():
                content = response.get("content", {})
                ref = content.get("application/json", {}).get("schema", {}).get("$ref")
                is_error = status.isdigit() and int(status) >= 400
                if ref in (_PROBLEM_REF, _FASTAPI_VALIDATION_REF) or (is_error and not content):
                    response["content"] = _problem_content()
                    if ref == _FASTAPI_VALIDATION_REF:
                        response["description"] = _DESCRIPTIONS[422]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    if "ProblemPublic" not in components:
        problem = ProblemPublic.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["ProblemPublic"] = problem
    # Set by serve.problems.problem_response (the request's X-Request-ID). Declared here, not
    # on ProblemPublic, while warbler/protocol.py is being split into a package: move it there.
    components["ProblemPublic"].setdefault("properties", {}).setdefault(
        "request_id",
        {
            "type": "string",
            "title": "Request Id",
            "maxLength": 64,
            "description": "The request's id, as in its X-Request-ID response header",
        },
    )


def install_problem_openapi(app: FastAPI) -> None:
    """Make the app's OpenAPI declare problem JSON (application/problem+json) for its errors."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _declare_problems(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error a request can raise to a problem JSON response."""
    app.add_exception_handler(WarblerError, _on_warbler_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(ValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
