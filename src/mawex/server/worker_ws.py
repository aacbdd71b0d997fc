"""``WS /v1/worker``: one session per worker, guarded by an explicit state.

Hostile input is bounded here: a frame over the size limit, a frame that is not
a valid message, a first frame that is not ``hello`` (or none within the hello
deadline) ends the session with an ``error`` frame; a worker sending faster than
its frame rate is read more slowly (TCP backpressure holds it back); a result
over the result limit fails its attempt instead of being stored, and an error
text is cut to :data:`~mawex.wire.api.MAX_ERROR_CHARS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from mawex.errors import MawexError, NotLeader, Rejected, TooLarge
from mawex.master.engine import Engine
from mawex.model import check_name
from mawex.server.limits import NetLimits, TokenBucket
from mawex.wire import worker as wire
from mawex.wire.api import MAX_ERROR_CHARS, ApiLimits

log = logging.getLogger("mawex.master")


class SessionState(enum.Enum):
    """Where a worker session is in its life."""

    CONNECTING = "connecting"
    CHECKED_IN = "checked_in"
    CLOSED = "closed"


class WorkerSession:
    """Outgoing frames go through a queue drained by one writer task."""

    def __init__(self, websocket: WebSocket, *, batch: bool = False) -> None:
        self.websocket = websocket
        #: The worker takes several messages in one array frame (protocol version 2).
        self.batch = batch
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
        welcomed = False  # the welcome always goes alone: the worker reads it by itself
        try:
            while True:
                frame = await self._queue.get()
                if frame is not None and self.batch and welcomed and not self._queue.empty():
                    frame = self._gather(frame)
                if frame is None:
                    code, reason = self._close or (1000, "")
                    self.state = SessionState.CLOSED
                    await self.websocket.close(code, reason[:120])
                    return
                await self.websocket.send_text(frame.decode())
                welcomed = True
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.state = SessionState.CLOSED

    def _gather(self, first: bytes) -> bytes | None:
        """``first`` and the frames queued behind it as one array frame; a queued
        close is put back to follow it."""
        frames = [first]
        queue = self._queue
        while not queue.empty():
            frame = queue.get_nowait()
            if frame is None:  # the close goes out after what was queued before it
                while not queue.empty():
                    queue.get_nowait()  # ... and nothing queued after it
                queue.put_nowait(None)
                break
            frames.append(frame)
        return wire.join_frames(frames) if len(frames) > 1 else first

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


def _decode(text: str | None, data: bytes | None, max_frame: int) -> wire.WorkerMessage:
    frame = text if text is not None else data
    if frame is None:
        raise Rejected("empty frame")
    if len(frame) > max_frame:
        raise TooLarge(f"frame of {len(frame)} bytes is over the limit of {max_frame}")
    try:
        if isinstance(frame, bytes):  # JSON is text: a binary frame must be UTF-8 too
            frame = frame.decode("utf-8")
        return wire.decode_worker_message(frame)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Rejected(f"invalid frame: {exc}") from None


async def _receive(websocket: WebSocket, max_frame: int) -> wire.WorkerMessage | None:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return _decode(message.get("text"), message.get("bytes"), max_frame)


def bound_finished(message: wire.Finished, limits: ApiLimits) -> wire.Finished:
    """``message``, with a result over the limit turned into a failure and its error cut short."""
    if message.ok and len(message.result) > limits.max_result_bytes:
        return msgspec.structs.replace(
            message,
            ok=False,
            result=msgspec.Raw(b"null"),
            error=f"result of {len(message.result)} bytes is over the master's limit of "
            f"{limits.max_result_bytes} bytes (--max-result)",
        )
    if message.error is not None and len(message.error) > MAX_ERROR_CHARS:
        cut = message.error[: MAX_ERROR_CHARS - 40]
        return msgspec.structs.replace(
            message, error=f"{cut}... ({len(message.error)} characters, cut)"
        )
    return message


async def worker_channel(websocket: WebSocket) -> None:
    engine: Engine = websocket.app.state.engine
    limits: ApiLimits = websocket.app.state.api_limits
    net: NetLimits = websocket.app.state.net_limits
    max_frame = limits.max_frame_bytes
    await websocket.accept()
    try:
        async with asyncio.timeout(net.hello_timeout):
            hello = await _receive(websocket, max_frame)
        if not isinstance(hello, wire.Hello):
            raise Rejected("the first frame must be hello")
        check_name(hello.worker, "worker")
        check_name(hello.group, "group")
        check_name(hello.pod, "pod")
        engine._require_leader()
    except TimeoutError:
        await _reject(websocket, Rejected(f"no hello within {net.hello_timeout:g} s"))
        return
    except MawexError as exc:
        await _reject(websocket, exc)
        return
    except (WebSocketDisconnect, RuntimeError, OSError):
        return
    session = WorkerSession(websocket, batch=hello.version >= wire.BATCH_VERSION)
    bucket = TokenBucket(net.worker_rate, net.worker_burst) if net.worker_rate > 0 else None
    loop = asyncio.get_running_loop()
    throttled = 0
    try:
        await engine.worker_hello(hello, session)
        session.state = SessionState.CHECKED_IN
        while session.state is SessionState.CHECKED_IN:
            if bucket is not None:
                delay = bucket.take(loop.time())
                if delay > 0:  # over its rate: read it no faster than that
                    throttled += 1
                    await asyncio.sleep(delay)
            message = await _receive(websocket, max_frame)
            if message is None:
                break
            if isinstance(message, wire.Hello):
                raise Rejected("hello sent twice")
            if isinstance(message, wire.Finished):
                message = bound_finished(message, limits)
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
        if throttled:
            log.warning(
                "worker sent frames faster than its rate and was slowed down",
                extra={
                    "action": "worker_throttled",
                    "worker": hello.worker,
                    "frames": throttled,
                    "rate": net.worker_rate,
                },
            )
