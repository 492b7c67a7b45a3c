"""The search page: ``/``, its static files (plain HTML, CSS and JS; no build step, no CDN) and its icon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.routes.deps import runtime
from service.runtime import Runtime

STATIC = Path(__file__).resolve().parents[1] / "static"
_PAGE = (STATIC / "index.html").read_text()
_ICON = (STATIC / "favicon.svg").read_bytes()

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def page(rt: Annotated[Runtime, Depends(runtime)]) -> HTMLResponse:
    """The page, told the server's k limit so that "load more" stops there instead of earning a 422."""
    html = _PAGE.replace("{{max_k}}", str(rt.settings.max_k))
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> Response:
    """The page's icon (which it links as ``/static/favicon.svg``) where browsers and tools look for one
    by default: the same SVG, so that there is one icon to keep."""
    return Response(_ICON, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})


def static_files() -> StaticFiles:
    """The page's CSS and JS (StaticFiles answers conditional requests and refuses paths outside)."""
    return StaticFiles(directory=STATIC)
