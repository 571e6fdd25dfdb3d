"""Checks made before any handler runs: the server's token, when it has one, and a body whose
declared size is over the upload limit (refused before it is read)."""

import secrets

from fastapi import Request
from fastapi.responses import JSONResponse

from gpulab.web.inputs import MB, upload_limit_bytes

TOKEN_COOKIE = "gpulab_token"


def given_token(request: Request) -> str:
    """The token a request carries: bearer header, ?token= (a link the server printed) or cookie."""
    return (
        request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        or request.query_params.get("token")
        or request.cookies.get(TOKEN_COOKIE)
        or ""
    )


def token_ok(given: str, token: str | None) -> bool:
    """Whether a request may pass: always without a token, else only with the same token."""
    return token is None or secrets.compare_digest(given.encode(), token.encode())


def declared_too_large(content_length: str | None, max_upload_mb: float) -> bool:
    """A body declared over the limit; one MB of slack covers a multipart form's other fields."""
    if content_length is None or not content_length.isdigit():
        return False
    return int(content_length) > upload_limit_bytes(max_upload_mb) + MB


async def guard(request: Request, call_next):
    state = request.app.state.web
    if not token_ok(given_token(request), state.token):
        return JSONResponse(
            {"error": "this server needs its token: send Authorization: Bearer TOKEN"},
            status_code=401,
        )
    if declared_too_large(request.headers.get("content-length"), state.max_upload_mb):
        return JSONResponse(
            {"error": f"upload too large: the limit is {state.max_upload_mb:g} MB"},
            status_code=413,
        )
    response = await call_next(request)
    if state.token is not None and request.query_params.get("token") == state.token:
        response.set_cookie(TOKEN_COOKIE, state.token, httponly=True, samesite="strict")
    return response
