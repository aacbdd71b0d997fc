"""The result topic over HTTP: ``GET /v1/results`` (long poll) and ``WS /v1/results/stream``."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from mawex.errors import Rejected
from mawex.master.engine import Engine
from mawex.server.responses import raw_json
from mawex.wire import api

MAX_LIMIT = 10_000
MAX_WAIT_S = 60.0
STREAM_IDLE_S = 15.0


async def results(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    query = request.query_params
    start = api.parse_int(query.get("from"), "from", 0, 0, 1 << 62)
    limit = api.parse_int(query.get("limit"), "limit", 1000, 1, MAX_LIMIT)
    wait = api.parse_seconds(query.get("wait"), "wait", MAX_WAIT_S)
    events, next_offset = await engine.topic.read(start, limit)
    if not events and wait > 0 and await engine.topic.wait(max(start, 1), wait):
        events, next_offset = await engine.topic.read(start, limit)
    body = b'{"events":[' + b",".join(events) + b'],"next":' + str(next_offset).encode() + b"}"
    return raw_json(body)


async def stream(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    try:
        offset = api.parse_int(websocket.query_params.get("from"), "from", 0, 0, 1 << 62)
    except Rejected as exc:
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    await websocket.accept()
    # A subscriber that leaves must not linger until the next event: watch its side too.
    sender = asyncio.ensure_future(_send_events(websocket, engine, offset))
    receiver = asyncio.ensure_future(_until_closed(websocket))
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)


async def _send_events(websocket: WebSocket, engine: Engine, offset: int) -> None:
    try:
        while True:
            events, next_offset = await engine.topic.read(offset, 1000)
            for body in events:
                await websocket.send_text(body.decode())
            offset = next_offset
            if not events:
                await engine.topic.wait(max(offset, 1), STREAM_IDLE_S)
    except (WebSocketDisconnect, RuntimeError, OSError):
        return


async def _until_closed(websocket: WebSocket) -> None:
    """Return when the subscriber disconnects; what it sends is ignored."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
