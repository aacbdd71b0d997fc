"""The worker side of the connect-back channel (:mod:`mawex.wire.executor`).

A sandbox that runs its executor in another process (``forked``, ``k8s``) starts a
:class:`ConnectBackServer` once, then per attempt::

    secret = server.new_secret()
    expectation = server.expect(secret, TaskFrame(...))   # before starting the process
    start_the_process(server.url_for(secret))             # runs `mawex executor --connect URL`
    outcome = await expectation                           # the Outcome the executor reported
    # ... or, when the process is gone: ChildLost says the channel ended without a result

The executor process connects (WebSocket), registers with the secret of its URL,
receives the ``task`` frame, runs it and sends a ``result``; the server answers
``ack`` and the process exits. A secret is random, usable once, and revoked by
:meth:`ConnectBackServer.forget` (or :meth:`Expectation.cancel`): an unknown or
spent secret is answered with ``reject``. The secret travels in the URL's query
(``?secret=...``) for the process's command line, but the executor sends it only
inside its ``register`` frame, never in the HTTP request.

A worker that starts the executor process itself can skip the network: with
:meth:`ConnectBackServer.attach` it serves the same frames on one end of a socket
pair and passes the other end to the process, whose URL is then ``fd://N?secret=S``
(see :mod:`mawex.wire.executor`). The forked sandbox does this; ``start()`` (the
listening WebSocket server) is needed only for ``ws://`` URLs.

This module knows nothing of processes: telling "the executor crashed" from "the
executor reported a failure" is the sandbox's job, with :class:`ChildLost` as the
hint that the channel ended early.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable, Generator
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from mawex.model import Task
from mawex.sandbox.base import Outcome
from mawex.wire.executor import (
    FRAME_HEADER,
    AckFrame,
    Log,
    Register,
    Reject,
    Result,
    TaskFrame,
    decode_executor_frame,
    encode,
    split_connect_url,
)


def task_frame(
    task: Task, executor_ref: str, args: dict[str, str], timeout_s: float | None
) -> TaskFrame:
    """The ``task`` frame that hands one attempt to its executor process."""
    return TaskFrame(
        group=task.group,
        id=task.id,
        attempt=task.attempt,
        payload=msgspec.Raw(msgspec.json.encode(task.payload)),
        executor=executor_ref,
        args=args,
        timeout_s=timeout_s,
    )


__all__ = [
    "CONNECT_PATH",
    "ChildLost",
    "ConnectBackServer",
    "Expectation",
    "split_connect_url",
]

log = logging.getLogger("mawex.sandbox")

#: The path the executor connects to.
CONNECT_PATH = "/v1/executor"

#: Default bound of one frame (a task's payload, a result).
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class ChildLost(Exception):
    """The executor's channel ended without a result (the process died, or broke the protocol)."""


class Expectation:
    """One attempt the server waits for: ``await expectation`` gives its :class:`Outcome`.

    ``registered`` completes (with the pid the executor announced, 0 if none) once
    the executor has registered and been sent the task. Awaiting raises
    :class:`ChildLost` when the channel ends without a result, and
    :class:`asyncio.CancelledError` after :meth:`cancel`.
    """

    __slots__ = ("_connection", "_server", "outcome", "registered", "secret", "task")

    def __init__(self, server: ConnectBackServer, secret: str, task: TaskFrame) -> None:
        loop = asyncio.get_running_loop()
        self._server = server
        self._connection: _Channel | None = None
        self.secret = secret
        self.task = task
        self.registered: asyncio.Future[int] = loop.create_future()
        self.outcome: asyncio.Future[Outcome] = loop.create_future()

    @property
    def url(self) -> str:
        """The ``--connect`` URL of this attempt."""
        return self._server.url_for(self.secret)

    @property
    def done(self) -> bool:
        """Whether the outcome is known (reported, lost or cancelled)."""
        return self.outcome.done()

    def __await__(self) -> Generator[Any, None, Outcome]:
        return self.outcome.__await__()

    def cancel(self) -> None:
        """Stop waiting: revoke the secret and close the executor's connection, if any."""
        self._server.forget(self.secret)

    # -- used by the server ---------------------------------------------------------

    def _finish(self, outcome: Outcome | None = None, lost: str | None = None) -> None:
        if not self.outcome.done():
            if outcome is not None:
                self.outcome.set_result(outcome)
            else:
                self.outcome.set_exception(ChildLost(lost or "connection lost"))
        if not self.registered.done():
            self.registered.cancel()

    def _abandon(self) -> None:
        if not self.outcome.done():
            self.outcome.cancel()
        elif not self.outcome.cancelled():
            self.outcome.exception()  # retrieved: the waiter gave up on it
        if not self.registered.done():
            self.registered.cancel()


class ConnectBackServer:
    """A WebSocket server on the worker side that hands tasks to executor processes.

    ``host``/``port`` is where it listens (port 0: any free port); ``advertise`` is
    the ``ws://host:port`` base the executors are told to use (a reachable address
    for k8s pods; default: the bound address). ``on_log(secret, line)`` receives the
    executors' ``log`` frames (default: the ``mawex.sandbox`` logger).
    ``register_timeout`` bounds the wait for the first frame of a connection.
    ``ping_interval`` (seconds, None to disable) detects dead peers on long tasks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        advertise: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        register_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        on_log: Callable[[str, str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.advertise = advertise.rstrip("/") if advertise else None
        self.max_frame = max_frame
        self.register_timeout = register_timeout
        self.ping_interval = ping_interval
        self.on_log = on_log
        self._server: Server | None = None
        self._base: str | None = None
        self._pending: dict[str, Expectation] = {}
        self._active: dict[str, Expectation] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._streams: set[asyncio.Future[None]] = set()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen (idempotent)."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handle_ws,
            self.host,
            self.port,
            max_size=self.max_frame,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            close_timeout=1,
            compression=None,
            logger=logging.getLogger("mawex.sandbox.connect_back"),
        )
        sockname = next(iter(self._server.sockets)).getsockname()
        host = sockname[0]
        if ":" in host:
            host = f"[{host}]"
        self.port = int(sockname[1])
        self._base = self.advertise or f"ws://{host}:{self.port}"
        log.debug(
            "connect-back server listening",
            extra={"action": "connect_back_listen", "url": self._base},
        )

    async def close(self) -> None:
        """Stop listening, close every executor connection and abandon every expectation."""
        for expectation in [*self._pending.values(), *self._active.values()]:
            expectation._abandon()
            if isinstance(expectation._connection, _BoundSocket):
                expectation._connection.close_now()
        self._pending.clear()
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()
        streams = list(self._streams)
        for stream in streams:
            stream.cancel()
        if streams:
            await asyncio.wait(streams)
        self._active.clear()

    async def __aenter__(self) -> ConnectBackServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- per attempt ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base ``ws://host:port/v1/executor`` URL (the server must be started)."""
        if self._base is None:
            raise RuntimeError("the connect-back server is not started")
        return f"{self._base}{CONNECT_PATH}"

    @staticmethod
    def new_secret() -> str:
        """A fresh random secret (URL-safe, 192 bits)."""
        return secrets.token_urlsafe(24)

    def url_for(self, secret: str) -> str:
        """The ``--connect`` URL for ``secret``."""
        return f"{self.url}?secret={quote(secret, safe='')}"

    def expect(self, secret: str, task: TaskFrame) -> Expectation:
        """Wait for an executor registering with ``secret``; it will be sent ``task``.

        Call before the executor process starts. The secret is usable once.
        """
        if secret in self._pending or secret in self._active:
            raise ValueError("this secret is already in use")
        expectation = Expectation(self, secret, task)
        self._pending[secret] = expectation
        return expectation

    def forget(self, secret: str) -> None:
        """Revoke ``secret``: its expectation is cancelled and its connection closed."""
        expectation = self._pending.pop(secret, None) or self._active.pop(secret, None)
        if expectation is None:
            return
        expectation._abandon()
        connection = expectation._connection
        if connection is not None:
            closing = asyncio.ensure_future(connection.close(1000, "attempt over"))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    @property
    def waiting(self) -> int:
        """How many expectations are registered or pending."""
        return len(self._pending) + len(self._active)

    # -- inherited stream sockets ---------------------------------------------------

    def attach(self, sock: socket.socket, expectation: Expectation | None = None) -> None:
        """Serve the protocol on ``sock``, a connected stream socket whose peer is an executor.

        This is the ``fd://`` transport (see :mod:`mawex.wire.executor`): the worker
        creates a socket pair, keeps one end here and hands the other to the process
        it starts, which registers on it like on a WebSocket. Needs no :meth:`start`.

        With ``expectation`` the socket is bound to that attempt: its task frame is
        written at once, so the executor finds it waiting when it registers (with
        that attempt's secret, or the connection is refused). This path is the
        forked sandbox's, once per task: it runs on loop callbacks, without a task
        or a stream.
        """
        if expectation is not None:
            if self._pending.get(expectation.secret) is not expectation:
                sock.close()  # cancelled already
                return
            _BoundSocket(self, sock, expectation)
            return
        task = asyncio.ensure_future(self._handle_stream(sock))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _handle_stream(self, sock: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        except OSError:
            sock.close()
            return
        channel = _StreamChannel(reader, writer, self.max_frame)
        try:
            await self._handle(channel)
        finally:
            await channel.close(1000, "done")

    # -- the connection handler -------------------------------------------------------

    async def _handle_ws(self, ws: ServerConnection) -> None:
        if ws.request is None or urlsplit(ws.request.path).path != CONNECT_PATH:
            await ws.close(code=1008, reason="unknown path")
            return
        await self._handle(_WebSocketChannel(ws))

    async def _handle(self, channel: _Channel) -> None:
        try:
            async with asyncio.timeout(self.register_timeout):
                first = await channel.recv()
        except (TimeoutError, _Closed):
            await channel.close(1008, "no register frame")
            return
        try:
            frame = decode_executor_frame(first)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reject(channel, f"invalid register frame: {exc}")
            return
        if not isinstance(frame, Register):
            await self._reject(channel, f"expected a register frame, got {type(frame).__name__}")
            return
        expectation = self._pending.pop(frame.secret, None)
        if expectation is None or expectation.done:
            await self._reject(channel, "unknown or already used secret")
            return
        self._active[frame.secret] = expectation
        expectation._connection = channel
        try:
            await self._serve(channel, expectation, frame)
        finally:
            self._active.pop(frame.secret, None)
            expectation._connection = None

    async def _reject(self, channel: _Channel, reason: str) -> None:
        log.warning(
            "connect-back registration refused",
            extra={"action": "connect_back_reject", "reason": reason, "peer": channel.peer},
        )
        try:
            await channel.send(encode(Reject(reason=reason)))
        except _Closed:
            pass
        await channel.close(1008, "rejected")

    async def _serve(
        self, channel: _Channel, expectation: Expectation, reg: Register, task_sent: bool = False
    ) -> None:
        if not task_sent:
            try:
                await channel.send(encode(expectation.task))
            except _Closed as exc:
                expectation._finish(lost=f"connection lost before the task was sent ({exc})")
                return
        if not expectation.registered.done():
            expectation.registered.set_result(reg.pid)
        while True:
            try:
                data = await channel.recv()
            except _Closed as exc:
                expectation._finish(lost=f"connection lost before a result ({exc})")
                return
            try:
                frame = decode_executor_frame(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                expectation._finish(lost=f"protocol error: invalid frame: {exc}")
                await channel.close(1002, "invalid frame")
                return
            if isinstance(frame, Log):
                self._log_line(expectation.secret, frame.line)
            elif isinstance(frame, Result):
                expectation._finish(_outcome(frame))
                try:
                    await channel.send(encode(AckFrame()))
                except _Closed:
                    pass  # the result is in: whether the executor hears the ack is moot
                return
            else:
                expectation._finish(lost="protocol error: register frame sent twice")
                await channel.close(1002, "unexpected frame")
                return

    def _log_line(self, secret: str, line: str) -> None:
        if self.on_log is not None:
            self.on_log(secret, line)
        else:
            log.info(line, extra={"action": "executor_log"})


class _BoundSocket:
    """An ``fd://`` socket bound to one expectation, served on loop callbacks.

    Writes the task frame at once, then reads: ``register`` (with the expectation's
    secret), any ``log`` frames, and the ``result``, which it answers with ``ack``.
    End of file, an invalid frame, or a frame over ``max_frame`` end it early
    (:class:`ChildLost`); :meth:`close_now` (on the expectation's cancel) ends it quietly.
    """

    peer = "inherited socket"

    def __init__(
        self, server: ConnectBackServer, sock: socket.socket, expectation: Expectation
    ) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.expectation = expectation
        self.loop = asyncio.get_running_loop()
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.registered = False
        self.open = True
        sock.setblocking(False)
        secret = expectation.secret
        server._pending.pop(secret, None)
        server._active[secret] = expectation
        expectation._connection = self
        self.loop.add_reader(self.fd, self._readable)
        self._write(encode(expectation.task))

    # -- writing ------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        self.outbox += FRAME_HEADER.pack(len(frame)) + frame
        self._flush()

    def _flush(self) -> None:
        if not self.open:
            return
        try:
            sent = self.sock.send(self.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the executor is gone: what it sent may still be read
            self.outbox.clear()
            sent = 0
        del self.outbox[:sent]
        if self.outbox:
            self.loop.add_writer(self.fd, self._flush)
        else:
            self.loop.remove_writer(self.fd)

    # -- reading ------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(lost=f"connection lost before a result ({exc})")
            return
        if not data:
            what = "a result" if self.registered else "registering"
            self._end(lost=f"connection lost before {what} (connection closed)")
            return
        self.inbox += data
        while self.open and len(self.inbox) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self.inbox)
            if size > self.server.max_frame:
                self._end(lost=f"protocol error: a frame of {size} bytes is over the limit")
                return
            if len(self.inbox) < FRAME_HEADER.size + size:
                return
            frame = bytes(self.inbox[FRAME_HEADER.size : FRAME_HEADER.size + size])
            del self.inbox[: FRAME_HEADER.size + size]
            self._on_frame(frame)

    def _on_frame(self, data: bytes) -> None:
        expectation = self.expectation
        try:
            frame = decode_executor_frame(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._end(lost=f"protocol error: invalid frame: {exc}")
            return
        if isinstance(frame, Register):
            if self.registered or frame.secret != expectation.secret:
                self._end(lost="protocol error: expected one register frame with its secret")
                return
            self.registered = True
            if not expectation.registered.done():
                expectation.registered.set_result(frame.pid)
        elif not self.registered:
            self._end(lost="protocol error: expected a register frame first")
        elif isinstance(frame, Log):
            self.server._log_line(expectation.secret, frame.line)
        elif isinstance(frame, Result):
            expectation._finish(_outcome(frame))
            self._write(encode(AckFrame()))
            self._end()

    def _end(self, lost: str | None = None) -> None:
        if lost is not None:
            self.expectation._finish(lost=lost)
        self.close_now()

    def close_now(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if not self.open:
            return
        self.open = False
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.sock.close()
        self.server._active.pop(self.expectation.secret, None)
        if self.expectation._connection is self:
            self.expectation._connection = None

    async def recv(self) -> bytes:
        """Not used: the frames of a bound socket arrive on its callbacks."""
        raise _Closed("a bound socket is read by its callbacks")

    async def send(self, data: bytes) -> None:
        """Send one frame."""
        self._write(data)

    async def close(self, code: int, reason: str) -> None:
        """Close the socket (the _Channel protocol)."""
        self.close_now()


class _Closed(Exception):
    """The channel is closed; the message says how."""


class _Channel(Protocol):
    """One executor connection: a WebSocket or an inherited stream socket."""

    peer: str

    async def recv(self) -> bytes | str:
        """The next frame; raises _Closed."""

    async def send(self, data: bytes) -> None:
        """Send one frame; raises _Closed."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection (idempotent)."""


class _WebSocketChannel:
    """A connect-back WebSocket."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.peer = _peer(ws)

    async def recv(self) -> bytes | str:
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise _Closed(_why(exc)) from None

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send(data, text=True)
        except ConnectionClosed as exc:
            raise _Closed(_why(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, reason=reason)


class _StreamChannel:
    """An inherited stream socket: length-prefixed frames (the ``fd://`` transport)."""

    peer = "inherited socket"

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame

    async def recv(self) -> bytes:
        try:
            header = await self.reader.readexactly(FRAME_HEADER.size)
            (size,) = FRAME_HEADER.unpack(header)
            if size > self.max_frame:
                raise _Closed(f"frame of {size} bytes over the limit of {self.max_frame}")
            return await self.reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise _Closed("connection closed") from None
        except OSError as exc:
            raise _Closed(str(exc)) from None

    async def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise _Closed("connection closed")
        try:
            self.writer.write(FRAME_HEADER.pack(len(data)) + data)
            await self.writer.drain()
        except OSError as exc:
            raise _Closed(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def _outcome(frame: Result) -> Outcome:
    if frame.ok:
        return Outcome.success(bytes(frame.result))
    return Outcome.failure(frame.error or "the executor reported a failure without an error")


def _why(exc: ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "no close frame"
    return f"code {rcvd.code}" + (f": {rcvd.reason}" if rcvd.reason else "")


def _peer(ws: ServerConnection) -> str:
    try:
        address = ws.remote_address
    except Exception:
        return "?"
    return str(address[0]) if isinstance(address, tuple) else str(address)
