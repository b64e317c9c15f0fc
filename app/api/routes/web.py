"""GET /: the web page, and /static/: its script and styles, built from web/ and committed.

The page is one HTML file with three things filled in per request: the page's settings (the trace
link template, whether browser spans are collected), cache-busting hashes of the assets from the
build manifest, and a `traceparent` meta tag, so the browser's document-load spans join the trace
of the request that served the page.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

from opentelemetry import propagate
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app import __version__
from app.api.state import State
from app.core.settings import Settings

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
ASSETS = ("app.js", "app.css")
SECURITY_HEADERS = {
    # Scripts and styles from this origin only; the config is JSON in a non-executed script tag.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def manifest() -> dict[str, Any]:
    """What web/build.sh wrote: hashes of its inputs and of the assets it produced."""
    data: dict[str, Any] = json.loads((STATIC_DIR / "manifest.json").read_text())
    return data


@functools.cache
def _template() -> str:
    page = (STATIC_DIR / "index.html").read_text()
    outputs = manifest()["outputs"]
    for asset in ASSETS:
        page = page.replace(f'"/static/{asset}"', f'"/static/{asset}?v={outputs[asset][:16]}"')
    return page


def page_config(settings: Settings) -> dict[str, Any]:
    return {
        "version": __version__,
        "traceUrlTemplate": settings.trace_url_template,
        "browserTraces": settings.browser_traces_enabled,
    }


def render(settings: Settings, traceparent: str | None) -> str:
    # "<" escaped so no value can close the script element; the JSON itself stays valid.
    config = json.dumps(page_config(settings), separators=(",", ":")).replace("<", "\\u003c")
    meta = f'<meta name="traceparent" content="{html.escape(traceparent)}">' if traceparent else ""
    return _template().replace("<!--config-->", config).replace("<!--traceparent-->", meta)


async def index(request: Request) -> Response:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return HTMLResponse(render(State.of(request).settings, carrier.get("traceparent")), headers=SECURITY_HEADERS)


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
