"""The web console: static files (serve/console/, package data) at `/` and `/console/<file>`, served without a key
because they hold no data; every number and name the page shows comes from /v1 calls it makes with the key the
person typed (docs/console.md).

The Content-Security-Policy allows scripts and styles from this server only (no inline script, no event-handler
attributes, no eval): the page writes user data with textContent, and even markup that slipped into the page
could not run.
"""
from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from .http_errors import ApiError

router = APIRouter()
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def console_dir():
    return files("tuneforge.serve").joinpath("console")


def _asset(name: str) -> Response:
    """One file of the console folder by its exact name (names are looked up in the folder's listing, so no
    request can name a path outside it)."""
    entries = {entry.name: entry for entry in console_dir().iterdir() if entry.is_file()}
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if name not in entries or suffix not in TYPES:
        raise ApiError(404, f"no console file {name!r}", code="not_found")
    return Response(entries[name].read_bytes(), media_type=TYPES[suffix], headers=HEADERS)


@router.get("/", include_in_schema=False)
def console_page() -> Response:
    return _asset("index.html")


@router.get("/console", include_in_schema=False)
def console_redirect() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/console/{name}", include_in_schema=False)
def console_asset(name: str) -> Response:
    return _asset(name)
