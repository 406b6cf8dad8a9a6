"""Bearer-token check for every /v1 route, as ASGI middleware so it runs before anything reads the body.

A FastAPI dependency runs only after the body has been parsed, so a malformed body without a key was answered
with a JSON error (telling a stranger what the route expects) instead of 401. Here the request never reaches
the app without a valid key: no body byte is read, no route is matched. CORS preflights (OPTIONS) carry no
credentials by design; the CORS middleware outside this one answers them.
"""
from __future__ import annotations

import hmac

from .http_errors import ApiError, error_response

PROTECTED_PREFIX = "/v1"


def token_accepted(header: str, keys: list[str]) -> bool:
    """True when the Authorization header is `Bearer <one of keys>`; an empty token never matches."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    matched = False
    for key in keys:  # no early exit: the time taken does not tell which key came close
        matched |= bool(key) and hmac.compare_digest(token.encode(), key.encode())
    return matched


class BearerAuth:
    """ASGI middleware: 401 for a /v1 request without an accepted key (when keys are configured)."""

    def __init__(self, app, keys: list[str]):
        self.app, self.keys = app, list(keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or not _protected(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if token_accepted(header, self.keys):
            return await self.app(scope, receive, send)
        response = error_response(ApiError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                                           code="invalid_api_key"))
        await response(scope, receive, send)


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
