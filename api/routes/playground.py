"""The playground: static pages the API serves, whose scripts call the JSON API with the token the
user keeps in the browser's local storage. Pages never need the token (or anything secret) in the URL."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "playground" / "static"

# Everything the pages load comes from this origin; images may be outputs served elsewhere
# (KILN_PUBLIC_URL) or previews of picked files (blob:).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data: blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.get("/")
def models_page() -> FileResponse:
    """The model list: the playground's front page."""
    return _page("index.html")


@router.get("/playground/models/{owner}/{name}")
def model_page(owner: str, name: str) -> FileResponse:
    """A form generated in the browser from the model's input schema."""
    return _page("model.html")


@router.get("/playground/predictions/{prediction_id}")
def prediction_page(prediction_id: str) -> FileResponse:
    """The page ``urls.web`` points at; the same page for every id, filled in from the JSON API."""
    return _page("prediction.html")


@router.get("/playground/batches/{batch_id}")
def batch_page(batch_id: str) -> FileResponse:
    """A batch's page (its ``urls.web``): counts, a progress bar, cancel and the results file."""
    return _page("batch.html")


@router.get("/playground/history")
def history_page() -> FileResponse:
    return _page("history.html")


def install_playground(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static")
