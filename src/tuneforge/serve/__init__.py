"""Serving: many adapters on one base model behind an OpenAI-compatible HTTP API, with fine-tuning jobs.

`serve(ServeConfig(...))` runs the server; `create_app(config)` gives the ASGI app (for tests or another ASGI
server). The adapter pool and the generation engine need only torch; the HTTP layer needs the `serve` extra
(fastapi, uvicorn, python-multipart).
"""
from .config import ServeConfig


def __getattr__(name):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)


__all__ = ["ServeConfig", "create_app", "serve"]
