"""Every error the service answers, in one shape: RFC 9457 problem details (``application/problem+json``).

A client reads the same members whatever went wrong: ``type`` (``about:blank``: the status says it all),
``title`` (the status's phrase), ``status``, ``detail`` (what was wrong with this request, one line) and,
for a request that does not match its schema, ``errors``: each field's path (``loc``), message and kind
(an extension member, as RFC 9457 allows; ``/readyz``'s 503 adds its own, ``bundle`` and ``redis``).
The service's own refusals (an ``HTTPException`` or an exception of the index), FastAPI's validation
errors, the router's 404 and 405, a body over the size limit and an unexpected 500 all go through
:func:`problem`; ``service/contract.py`` declares the shape for every error response of the OpenAPI
document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from index.errors import IndexInputError, ItemNotFoundError, ModalityConflictError, StoreUnavailableError
from service.encoder import EncodeError

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 1  # every 503 says when to try again: Redis failing over, or a write short of replicas
STATUS_OF = {
    EncodeError: 422,
    IndexInputError: 422,
    ModalityConflictError: 409,
    ItemNotFoundError: 404,
    StoreUnavailableError: 503,
}


def problem(status: int, detail: str, headers: Mapping | None = None, **extensions: Any) -> Response:
    """The problem-details response, in UTF-8; a 503 carries ``Retry-After``. A ``detail`` or a field name
    may hold a lone surrogate (from a ``\\ud800`` escape of the request), which UTF-8 cannot carry: it is
    written as that same JSON escape (it can only stand inside a JSON string)."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    content = json.dumps(body | extensions, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return Response(content, status, headers=headers, media_type=MEDIA_TYPE)


def summary(errors: list[dict]) -> str:
    """Pydantic's errors, one clause per field and message: 384 bad list entries read as one clause with
    a count and the first position, not as 384."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for error in errors:
        where = ".".join(map(str, error["loc"])) or "item"
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int)) or "item"
        grouped.setdefault((field, error["msg"]), []).append(where)
    return "; ".join(
        f"{places[0]}: {message}"
        if len(places) == 1
        else f"{field}: {message} ({len(places)} entries, first {places[0]})"
        for (field, message), places in grouped.items()
    )


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """A 422 naming each field. The input pydantic echoes is left out: it may be megabytes of base64,
    or a NaN literal JSON cannot carry back (a 500 the API fuzzer once found)."""
    errors = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
    return problem(422, summary(errors), errors=errors)


def _leaf_routes(routes: list) -> Iterator:
    """Every route, those of included routers too (FastAPI wraps each in one with an ``original_router``)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _leaf_routes(included.routes) if included is not None else [route]


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route of the path: Starlette names only those of the first route it matched
    (GET of ``/v1/items/{id}``, not DELETE)."""
    allowed: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            allowed |= route.methods
    return sorted(allowed)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """An ``HTTPException``: the routes' own (their detail), or the router's 404 and 405, told what
    was asked for (and a 405 lists every method of the path in ``Allow``)."""
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
        detail = f"{request.method} is not allowed on {request.url.path}: it takes {headers['Allow']}"
    elif exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"nothing at {request.url.path}"
    return problem(exc.status_code, detail, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: the same shape, and nothing of the exception (the log has it)."""
    return problem(500, "the service failed to answer this request; its log says why")


def _own_error(status: int):
    async def handle(request: Request, exc: Exception) -> Response:
        detail = f"no item with id {exc.args[0]!r}" if isinstance(exc, ItemNotFoundError) else str(exc)
        return problem(status, detail)

    return handle


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details."""
    for exception, status in STATUS_OF.items():
        app.add_exception_handler(exception, _own_error(status))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
