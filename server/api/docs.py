"""The API documentation at /docs: Swagger UI served from the package, under a strict CSP.

FastAPI's default page loads Swagger UI from a CDN (unpinned, no integrity check) on the origin where the
playground keeps the API key, and does not work offline. This page loads only this server's files:
swagger-ui-dist 5.35.0 (Apache-2.0, in static/docs/, its licence beside it) and a three-line initialiser.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server.api.playground import page_headers

STATIC_DIR = Path(__file__).resolve().parent / "static" / "docs"
# Swagger UI sets inline styles on its elements; scripts stay same-origin files only.
PAGE_HEADERS = page_headers(
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def mount_docs(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/docs/assets", StaticFiles(directory=STATIC_DIR), name="docs-assets")
