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
from mawex.server.ws_protocol import DIRECT, LeanWebSocketsProtocol
from mawex.wire import worker as wire
from mawex.wire.api import MAX_ERROR_CHARS, ApiLimits

log = logging.getLogger("mawex.master")


class SessionState(enum.Enum):
    """Where a worker session is in its life."""

    CONNECTING = "connecting"
    CHECKED_IN = "checked_in"
    CLOSED = "closed"


class WorkerSession:
    """Outgoing frames go out at the end of the event loop's pass that queued them,
    or at once when :meth:`flush` is called.

    On a connection that offers direct writes (:data:`~mawex.server.ws_protocol.DIRECT`),
    a checked-in session with nothing queued writes them to the socket itself, all the
    frames of one pass in one write; otherwise, and whenever the socket cannot take
    them at once, they go through a queue drained by one writer task, in order.
    """

    def __init__(self, websocket: WebSocket, *, batch: bool = False) -> None:
        self.websocket = websocket
        #: The worker takes several messages in one array frame (protocol version 2).
        self.batch = batch
        self.state = SessionState.CONNECTING
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._close: tuple[int, str] | None = None
        self.direct: LeanWebSocketsProtocol | None = websocket.scope.get("extensions", {}).get(
            DIRECT
        )
        #: Frames for the write at the end of this pass of the loop (direct writes only).
        self._pending: list[bytes] = []
        self._writer_idle = False
        self._writer = asyncio.create_task(self._write())

    def send(self, frame: bytes) -> None:
        if self.state is SessionState.CLOSED:
            return
        if self._pending:
            self._pending.append(frame)
        elif (
            self.direct is not None
            and self.state is SessionState.CHECKED_IN
            and self._writer_idle
            and self._queue.empty()
        ):
            self._pending.append(frame)
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._queue.put_nowait(frame)

    def flush(self) -> None:
        """Write the frames this pass queued now instead of at the end of the pass."""
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        frames, self._pending = self._pending, []
        if not frames:  # closed meanwhile: close() queued them ahead of the close
            return
        if self.batch and len(frames) > 1:
            frames = [wire.join_frames(frames)]
        assert self.direct is not None
        if not self.direct.write_texts(frames):  # the writer waits until it can
            for frame in frames:
                self._queue.put_nowait(frame)

    def close(self, code: int, reason: str) -> None:
        if self.state is not SessionState.CLOSED:
            self._close = (code, reason)
            pending, self._pending = self._pending, []
            for frame in pending:
                self._queue.put_nowait(frame)
            self._queue.put_nowait(None)

    async def _write(self) -> None:
        welcomed = False  # the welcome always goes alone: the worker reads it by itself
        try:
            while True:
                self._writer_idle = True
                frame = await self._queue.get()
                self._writer_idle = False
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
    await _CheckedIn(websocket, engine, hello, limits, net).serve()


class _CheckedIn:
    """A worker's session after its hello: its frames read, one at a time, in order.

    Frames come through the app's ``receive``, or straight from the connection
    (:meth:`read_direct`) when none waits in its queue; both hand each frame to
    :meth:`handle`. A frame :meth:`serve` received stays in that queue until
    :meth:`serve` runs again, and is then handled in the same step: one read
    directly never overtakes it.
    """

    def __init__(
        self,
        websocket: WebSocket,
        engine: Engine,
        hello: wire.Hello,
        limits: ApiLimits,
        net: NetLimits,
    ) -> None:
        self.websocket = websocket
        self.engine = engine
        self.hello = hello
        self.limits = limits
        self.net = net
        self.session = WorkerSession(websocket, batch=hello.version >= wire.BATCH_VERSION)
        self.bucket = (
            TokenBucket(net.worker_rate, net.worker_burst) if net.worker_rate > 0 else None
        )
        self.loop = asyncio.get_running_loop()
        self.throttled = 0

    def handle(self, message: wire.WorkerMessage) -> bool:
        """Pass a frame on to the engine; False once the session is over."""
        if isinstance(message, wire.Hello):
            raise Rejected("hello sent twice")
        if isinstance(message, wire.Finished):
            message = bound_finished(message, self.limits)
        self.engine.worker_message(self.hello.worker, self.session, message)
        return not isinstance(message, wire.Bye)

    def read_direct(self, text: bytes) -> bool:
        """:meth:`handle` a frame the connection read, unless it ends the session, is
        not valid, or the token of the frame after it is not there yet: then it goes
        to :meth:`serve`'s ``receive``, which answers it as ever. Whether it did."""
        if self.session.state is not SessionState.CHECKED_IN:
            return False
        now = self.loop.time()
        bucket = self.bucket
        if bucket is not None and not bucket.available(now):
            return False
        try:
            message = wire.decode_worker_message(text)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False
        if isinstance(message, wire.Hello | wire.Bye):
            return False
        self.handle(message)
        if bucket is not None:
            bucket.take(now)  # the next frame's: serve() takes one before each read
        return True

    async def serve(self) -> None:
        session, engine, hello, bucket = self.session, self.engine, self.hello, self.bucket
        direct = session.direct
        try:
            await engine.worker_hello(hello, session)
            session.state = SessionState.CHECKED_IN
            if direct is not None:
                direct.on_text = self.read_direct
            while session.state is SessionState.CHECKED_IN:
                if bucket is not None:
                    delay = bucket.take(self.loop.time())
                    if delay > 0:  # over its rate: read it no faster than that
                        self.throttled += 1
                        await asyncio.sleep(delay)
                message = await _receive(self.websocket, self.limits.max_frame_bytes)
                if message is None or not self.handle(message):
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
            if direct is not None:
                direct.on_text = None
            engine.worker_disconnected(hello.worker, session)
            await session.finish()
            if self.throttled:
                log.warning(
                    "worker sent frames faster than its rate and was slowed down",
                    extra={
                        "action": "worker_throttled",
                        "worker": hello.worker,
                        "frames": self.throttled,
                        "rate": self.net.worker_rate,
                    },
                )
