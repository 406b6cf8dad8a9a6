"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status codes OpenAI's
clients expect (they raise BadRequestError for 400, AuthenticationError for 401, NotFoundError for 404, ...),
and the request-size guard that produces 413 before a large body is read."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tuneforge.serve")

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         409: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "server_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                        headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        param, message = describe_validation_error(err.errors())
        return error_response(ApiError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error_response(ApiError(err.status_code, str(err.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(err).__name__}", code="server_error"))


def describe_validation_error(errors) -> tuple[str | None, str]:
    """(dotted field, message) of the first problem of a pydantic error list, the field as the client wrote it.
    Our own errors (types starting with `tf_`) read as they are, and may name a sub-field in ctx["field"];
    pydantic's generic ones ("Field required") get the field in front."""
    first = errors[0] if errors else {}
    ctx = first.get("ctx") or {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    if "field" in ctx:
        loc.append(str(ctx["field"]))
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if str(first.get("type", "")).startswith("tf_"):
        return param, message
    return param, f"{param}: {message}" if param else message


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a body longer than the limit gets 413. A declared Content-Length is refused before any
    byte is read; a chunked body is counted as it streams and cut off at the limit. Uploads to `upload_path`
    get their own (larger) limit."""

    def __init__(self, app, limit_bytes: int, upload_limit_bytes: int, upload_path: str = "/v1/files"):
        self.app, self.limit, self.upload_limit, self.upload_path = app, limit_bytes, upload_limit_bytes, upload_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"].rstrip("/") == self.upload_path else self.limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
        seen, exceeded, started = 0, False, False

        async def counting_receive():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                return  # whatever the app answers to a cut-off body, the client gets the 413 below
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if exceeded and not started:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        await error_response(ApiError(413, f"request body is larger than the limit of {limit / 2**20:.1f} MB",
                                      code="request_too_large"))({"type": "http"}, None, send)
