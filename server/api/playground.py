"""The web playground: a static page at `/` that calls the public `POST /v1/seg-swap` like any client.

Plain HTML/CSS/JS shipped in the package (server/api/static/playground), no CDN and no build step,
so it works offline. It adds no endpoint of its own: the page, its two assets, and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static" / "playground"
ASSETS_PATH = "/playground"
MOUNT_NAME = "playground"


def page_headers(csp: str) -> dict[str, str]:
    """Headers of a page served from the package: its CSP, no MIME sniffing, no referrer, always revalidated."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


# Everything the page loads comes from this origin; the CSP makes a stray CDN link fail loudly
# and keeps the API key field from being framed by another site.
PAGE_HEADERS = page_headers(
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; script-src 'self'; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def mount_playground(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/playground/`; calling it twice changes nothing."""
    if any(getattr(route, "name", None) == MOUNT_NAME for route in app.routes):
        return
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name=MOUNT_NAME)
