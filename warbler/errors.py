"""One error hierarchy. Raised anywhere; converted once at the edge (problem JSON, error frame)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    VALIDATION = "validation_error"
    UNAUTHENTICATED = "unauthenticated"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    USERNAME_TAKEN = "username_taken"
    NOT_MEMBER = "not_member"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNSUPPORTED = "unsupported"
    UNAVAILABLE = "unavailable"
    STALE_EPOCH = "stale_epoch"
    CONFIG = "config_error"
    INTERNAL = "internal_error"
    LIMIT_REACHED = "limit_reached"


_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.VALIDATION: 422,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.USERNAME_TAKEN: 409,
    ErrorCode.NOT_MEMBER: 403,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNSUPPORTED: 400,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.STALE_EPOCH: 503,
    ErrorCode.CONFIG: 500,
    ErrorCode.INTERNAL: 500,
    ErrorCode.LIMIT_REACHED: 403,
}


class WarblerError(Exception):
    """An error with a stable code, a human message and the HTTP status it maps to."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else _STATUS[code]
        self.details = details or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses Ray calls: keep code and details when pickled.
        return (type(self), (self.code, self.message, self.status, self.details))

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """RFC 9457 problem JSON."""
        body: dict[str, Any] = {
            "type": f"https://warbler.dev/errors/{self.code.value}",
            "title": self.code.value,
            "status": self.status,
            "detail": self.message,
            "code": self.code.value,
        }
        if instance:
            body["instance"] = instance
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"WarblerError({self.code.value!r}, {self.message!r})"
