"""HTTP plumbing of the endpoint: bounded JSON bodies, one error shape, the OpenAPI document.

Every client error is ``{"error": ..., "detail": [...]}`` (``schemas.ErrorResponse``) and is
logged as the access log's one line, without a traceback. ``RequestGuard`` refuses a body that
is not JSON (415) or is larger than ``MAX_BODY_BYTES`` (413, having read no more than that),
and serves the app's own OpenAPI 3.1 document at BentoML's ``/docs.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.schemas import OUT_OF_RANGE, ErrorResponse

MAX_BODY_BYTES = 4 * 1024 * 1024  # a 100,000-id lookalike seed is about 1.5 MB
BODY_METHODS = {"POST", "PUT", "PATCH"}
OPEN_ROUTES = {"/livez": "Liveness", "/healthz": "Health", "/readyz": "Readiness: models and the online store loaded"}
COMMON_ERRORS = {
    400: "Invalid request: malformed JSON, a wrong type, a value out of range, an unknown field",
    401: "No valid API key",
    403: "The API key lacks the route's scope",
    413: f"Body larger than {MAX_BODY_BYTES:,} bytes",
    415: "Body not JSON",
    422: "Well-formed, but not servable: as_of outside the served range, too few seed ids with features and consent",
    503: "A backing store (online features, registry) is unavailable; retry",
}


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """JSON where a missing number (a model not trained, a feature not known) is null, not NaN."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # a NaN somewhere: the rare case pays for the walk
            return super().render(_finite(content))


def error_json(message: str, detail: Iterable[dict] = ()) -> bytes:
    return json.dumps({"error": message, "detail": list(detail)}).encode()


async def send_error(send: Any, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer a raw ASGI request with the common error body."""
    body = error_json(message)
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class RequestGuard:
    """ASGI middleware: 415 for a body that is not JSON, 413 past ``max_body`` bytes (read
    no further), and ``/docs.json`` answered by the app's ``/openapi.json``."""

    def __init__(self, app: Any, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/docs.json":
            scope = {**scope, "path": "/openapi.json", "raw_path": b"/openapi.json"}
        send = _json_errors(send)
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        has_body = declared not in (None, b"0") or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if has_body and not _is_json(headers.get(b"content-type", b"").decode("latin-1")):
            await send_error(send, 415, "send the body as JSON (Content-Type: application/json)")
            return
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await send_error(send, 413, f"the body may hold at most {self.max_body:,} bytes")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                await send_error(send, 413, f"the body may hold at most {self.max_body:,} bytes")
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # what follows the body: a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _json_errors(send: Any) -> Any:
    """``send`` with the router's plain-text errors (BentoML's 404 for an unknown path) as the
    common error body."""
    replaced = False

    async def sending(message: dict) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and message["status"] >= 400:
            headers = message.get("headers") or []
            if not _is_json(dict(headers).get(b"content-type", b"").decode("latin-1")):
                replaced = True
                kept = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]  # Allow: for a 405
                status = message["status"]
                phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
                await send_error(send, status, phrase, kept)
                return
        if replaced:
            return  # the plain-text body it replaced
        await send(message)

    return sending


def _detail(errors: Iterable[dict]) -> list[dict]:
    """Validation errors without the offending input (it may be megabytes, or personal)."""
    return [{"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())], "msg": e.get("msg", ""),
             "type": e.get("type", "")} for e in errors]


def install(app: FastAPI) -> None:
    """The common error body for validation errors and HTTP errors (404, 405, 503, ...), and
    the OpenAPI document with bearer keys, the open routes and every error response."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        detail = _detail(error.errors())
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else first["msg"]
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        unservable = all(item["type"] == OUT_OF_RANGE for item in detail)  # well-formed, outside what is served
        return JSONResponse({"error": message + more, "detail": detail}, status_code=422 if unservable else 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        if isinstance(error.detail, dict):  # already an error body (``ErrorResponse``), items and all
            return JSONResponse(error.detail, status_code=error.status_code, headers=error.headers)
        return JSONResponse({"error": str(error.detail), "detail": []}, status_code=error.status_code, headers=error.headers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas["ErrorResponse"] = error_schema
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, not answered here
            schemas.pop(unused, None)
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for item in document["paths"].values():
            for operation in item.values():
                operation["security"] = [{"bearer": []}]
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)  # FastAPI's default: validation errors are 400 here
                for status, description in COMMON_ERRORS.items():
                    if status in (400, 413, 415, 422) and "requestBody" not in operation:
                        continue
                    responses[str(status)] = {"description": description, "content": error}
        for path, summary in OPEN_ROUTES.items():
            document["paths"][path] = {"get": {"summary": summary, "security": [], "responses": {"200": {"description": "OK"}}}}
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
