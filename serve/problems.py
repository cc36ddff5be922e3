"""The edge where errors become problem JSON (RFC 9457): every WarblerError, every validation
error, every HTTP error Starlette raises (404, 405), and last anything unexpected (logged, 500).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from warbler import metrics
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import PROBLEM_CONTENT_TYPE

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
    metrics.ERRORS.child(exc.code.value).inc()
    """The problem JSON response for an error raised while serving ``request``."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(
        exc.to_problem(instance=request.url.path),
        status_code=exc.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def validation_error(errors: list[Any]) -> WarblerError:
    """A VALIDATION WarblerError from pydantic/FastAPI error dicts, with a readable summary."""
    cleaned = [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]
    first = cleaned[0] if cleaned else {"loc": [], "msg": "invalid input"}
    summary = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
    if len(cleaned) > 1:
        summary += f" (and {len(cleaned) - 1} more)"
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
    logger.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(WarblerError(ErrorCode.INTERNAL, "internal server error"), request)


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error a request can raise to a problem JSON response."""
    app.add_exception_handler(WarblerError, _on_warbler_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(ValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
