"""Client errors with a machine-readable code; every error body has the same shape:
{"error": {"code", "message", "details"}, "request_id"}."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.gateway.schemas import ErrorResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: object | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def error_response(request: Request, status: int, code: str, message: str, details: object | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}, "request_id": getattr(request.state, "request_id", None)}
    return JSONResponse(body, status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc.status, exc.code, exc.message, exc.details, exc.headers)


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
