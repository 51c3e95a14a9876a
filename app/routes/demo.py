"""GET /demo: the demo storefront page, static files of ``app/static/demo`` (FUSIONREC_DEMO)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parent.parent / "static" / "demo"

router = APIRouter(tags=["demo"], include_in_schema=False)


@router.get("/demo")
async def page() -> FileResponse:
    """The page itself; it calls the REST API from the browser (same origin)."""
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html")


def install(app: FastAPI) -> None:
    """The page at /demo and its script and style sheet under /demo/."""
    app.include_router(router)
    app.mount("/demo", StaticFiles(directory=PAGE_DIR, html=True), name="demo")
