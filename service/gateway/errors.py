"""Client errors with a machine-readable code; every error body has the same shape:
{"error": {"code", "message", "details"}, "request_id"}."""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.gateway.rejections import AtCapacity, InvalidInput, Rejected, Unauthenticated, Unavailable, UnknownEntity
from service.gateway.schemas import ErrorResponse

# The one place where a use case's refusal becomes an HTTP status.
STATUS_OF: dict[type[Rejected], int] = {Unauthenticated: 401, UnknownEntity: 404, InvalidInput: 422, AtCapacity: 429, Unavailable: 503}


def status_of(exc: Rejected) -> int:
    return next(status for kind, status in STATUS_OF.items() if isinstance(exc, kind))


def error_response(request: Request, status: int, code: str, message: str, details: object | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}, "request_id": getattr(request.state, "request_id", None)}
    return JSONResponse(body, status_code=status, headers=headers)


async def rejected_handler(request: Request, exc: Rejected) -> JSONResponse:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(request, status_of(exc), exc.code, exc.message, exc.details, headers or None)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request, 400, "malformed_json", "the request body is not valid JSON")
    details = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg")} for e in errors]
    return error_response(request, 422, "invalid_request", "the request body does not match the schema", details)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    # Starlette's own headers (a 405's Allow) are kept
    return error_response(request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=getattr(exc, "headers", None))


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not a dependency fault (those degrade): logged with its traceback, answered as JSON."""
    import logging

    logging.getLogger("recranker.gateway").error("unhandled error", exc_info=exc)
    return error_response(request, 500, "internal_error", "the gateway failed on this request; the request id is in the logs")


ERROR_DESCRIPTIONS = {
    400: "malformed JSON",
    401: "a valid API key is required (when keys are set)",
    404: "unknown user, or no such route",
    405: "method not allowed (the Allow header lists the allowed ones)",
    413: "the body exceeds the size limit, whatever the transfer encoding",
    422: "the request does not match the schema or the service's limits (`details` says where)",
    429: "the LLM is at capacity (with RECRANKER_OVERLOAD_RESPONSE=reject); Retry-After says when to retry",
    503: "a dependency needed for this answer is unavailable; retry (Retry-After when known)",
}


def error_responses(*codes: int) -> dict[int, dict]:
    """OpenAPI `responses` for these statuses, all with the one error schema."""
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}
