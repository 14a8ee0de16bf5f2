"""The web UI: ``/`` is ``service/static/index.html``, ``/ui/{name}`` its stylesheet and scripts.

Plain files, no build step, nothing fetched from elsewhere (the UI works offline); left out of the OpenAPI
schema. Only flat file names of the static folder are served, so a request cannot leave it.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFoundError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png"}
_ASSET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.(css|js|svg|png)")

# Scripts and styles only from this server; images also from blob: URLs (previews of local files) and data:.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The single page of the UI."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


@router.get("/ui/{name}")
async def asset(name: str) -> FileResponse:
    """A stylesheet, script or icon of the UI; 404 for anything else."""
    path = STATIC_DIR / name
    if not _ASSET_NAME.fullmatch(name) or not path.is_file():
        raise NotFoundError(f"no UI file {name!r}", code="not_found")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=_HEADERS)
