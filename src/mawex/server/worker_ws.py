"""``WS /v1/worker``: one session per worker, guarded by an explicit state."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from mawex.errors import MawexError, NotLeader, Rejected
from mawex.master.engine import Engine
from mawex.model import check_name
from mawex.wire import worker as wire

log = logging.getLogger("mawex.master")

HELLO_TIMEOUT_S = 10.0
MAX_FRAME_BYTES = 2 << 20


class SessionState(enum.Enum):
    """Where a worker session is in its life."""

    CONNECTING = "connecting"
    CHECKED_IN = "checked_in"
    CLOSED = "closed"


class WorkerSession:
    """Outgoing frames go through a queue drained by one writer task."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.state = SessionState.CONNECTING
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._close: tuple[int, str] | None = None
        self._writer = asyncio.create_task(self._write())

    def send(self, frame: bytes) -> None:
        if self.state is not SessionState.CLOSED:
            self._queue.put_nowait(frame)

    def close(self, code: int, reason: str) -> None:
        if self.state is not SessionState.CLOSED:
            self._close = (code, reason)
            self._queue.put_nowait(None)

    async def _write(self) -> None:
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    code, reason = self._close or (1000, "")
                    self.state = SessionState.CLOSED
                    await self.websocket.close(code, reason[:120])
                    return
                await self.websocket.send_text(frame.decode())
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.state = SessionState.CLOSED

    async def finish(self) -> None:
        """Stop the writer, letting a queued close (with its error frame) go out first."""
        if self._close is not None and not self._writer.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        self.state = SessionState.CLOSED
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


async def _reject(websocket: WebSocket, error: MawexError) -> None:
    leader = error.leader if isinstance(error, NotLeader) else None
    frame = wire.Error(error=error.code, detail=error.detail, leader=leader)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_text(wire.encode(frame).decode())
        await websocket.close(1008 if isinstance(error, Rejected) else 1013, error.code)


def _decode(text: str | None, data: bytes | None) -> wire.WorkerMessage:
    frame = text if text is not None else data
    if frame is None:
        raise Rejected("empty frame")
    if len(frame) > MAX_FRAME_BYTES:
        raise Rejected(f"frame of {len(frame)} bytes is over {MAX_FRAME_BYTES}")
    try:
        return wire.decode_worker_message(frame)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise Rejected(f"invalid frame: {exc}") from None


async def _receive(websocket: WebSocket) -> wire.WorkerMessage | None:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return _decode(message.get("text"), message.get("bytes"))


async def worker_channel(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    await websocket.accept()
    try:
        hello = await asyncio.wait_for(_receive(websocket), HELLO_TIMEOUT_S)
        if not isinstance(hello, wire.Hello):
            raise Rejected("the first frame must be hello")
        check_name(hello.worker, "worker")
        check_name(hello.group, "group")
        check_name(hello.pod, "pod")
        engine._require_leader()
    except TimeoutError:
        await _reject(websocket, Rejected("no hello within 10 s"))
        return
    except MawexError as exc:
        await _reject(websocket, exc)
        return
    session = WorkerSession(websocket)
    try:
        await engine.worker_hello(hello, session)
        session.state = SessionState.CHECKED_IN
        while session.state is SessionState.CHECKED_IN:
            message = await _receive(websocket)
            if message is None:
                break
            if isinstance(message, wire.Hello):
                raise Rejected("hello sent twice")
            engine.worker_message(hello.worker, session, message)
            if isinstance(message, wire.Bye):
                break
    except MawexError as exc:
        session.send(
            wire.encode(
                wire.Error(
                    error=exc.code,
                    detail=exc.detail,
                    leader=exc.leader if isinstance(exc, NotLeader) else None,
                )
            )
        )
        session.close(1008, exc.code)
        await asyncio.sleep(0)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        engine.worker_disconnected(hello.worker, session)
        await session.finish()
