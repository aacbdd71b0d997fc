"""JSON responses and the one place errors become HTTP bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from mawex.errors import MawexError

_encoder = msgspec.json.Encoder()


def json_body(body: Any) -> bytes:
    return _encoder.encode(body)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def raw_json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def error_response(error: MawexError) -> Response:
    return json_response(error.to_body(), error.status)


async def mawex_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MawexError)
    return error_response(exc)
