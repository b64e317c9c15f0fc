"""`uvicorn app.main:app`: the ASGI application's stable import path (it lives in app/api/)."""

from starlette.applications import Starlette

from app.api import main as _api


def __getattr__(name: str) -> Starlette:
    # Built on first access, like app.api.main's own `app`, so importing this module costs nothing.
    if name == "app":
        return _api.app
    raise AttributeError(name)
