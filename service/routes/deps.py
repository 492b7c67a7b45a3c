"""Dependencies shared by the routes: the running service and write authorisation."""

from __future__ import annotations

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from service.runtime import Runtime

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required by write endpoints")


# Both are coroutines so that FastAPI calls them on the event loop: a plain function dependency costs
# a worker-thread round trip per request.
async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def require_writer(request: Request, key: str | None = Security(api_key_header)) -> None:
    """403 unless the request carries the API key (or the service runs in embedded demo mode)."""
    rt: Runtime = request.app.state.runtime
    if not rt.authorised(key):
        detail = "a valid X-API-Key header is required for writes"
        if rt.api_key is None and not rt.settings.demo:
            detail += " (this service has no XMHASH_API_KEY configured, so it accepts no writes)"
        raise HTTPException(status_code=403, detail=detail)
