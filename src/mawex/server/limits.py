"""Network limits of a master: connections, read deadlines, request sizes, message rates.

What uvicorn does not bound on its own, this module does:

- :func:`guarded_http_protocol`: uvicorn's HTTP protocol with a deadline on the
  request head (a connection must deliver its request line and headers within
  ``header_timeout`` of opening, or of the previous response) and a bound on the
  head's size (``max_header_bytes``). uvicorn only times out *idle* keep-alive
  connections, and any byte resets that timer, so without this a client could
  hold a connection open forever by sending nothing, or a header a byte at a time.
- :class:`RequestGuard`: an ASGI middleware that reads each request body within
  ``body_timeout`` and at most ``max_body`` bytes (checked while it streams in,
  and up front from ``Content-Length``), answering ``408``/``413`` otherwise.
- :class:`TokenBucket`: the per-session frame rate of the worker channel.
- :func:`raise_fd_limit`: room in ``RLIMIT_NOFILE`` for ``max_connections``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mawex.errors import MawexError, Rejected, TooLarge
from mawex.server.responses import error_response, json_body

log = logging.getLogger("mawex.master")


@dataclass(frozen=True, slots=True)
class NetLimits:
    """Connection-level limits of one master (the ``mawex master`` flags in brackets).

    - ``max_connections`` [``--max-connections``]: open HTTP and WebSocket
      connections; past it new requests get ``503`` (uvicorn's ``limit_concurrency``).
    - ``header_timeout`` [``--header-timeout``]: seconds to receive a request's head.
    - ``max_header_bytes``: the request line plus headers.
    - ``body_timeout`` [``--body-timeout``]: seconds to receive a request's body.
    - ``keep_alive_timeout``: an idle keep-alive connection is closed after it.
    - ``hello_timeout``: seconds a new worker connection has to send its ``hello``.
    - ``worker_rate``/``worker_burst`` [``--worker-rate``]: frames per second a
      worker connection may send (token bucket; 0: unlimited). Past it the master
      reads that connection more slowly, so TCP backpressure holds the sender back.
    """

    max_connections: int = 4096
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    hello_timeout: float = 10.0
    worker_rate: float = 2000.0
    worker_burst: float = 4000.0


class RequestTimeout(Rejected):
    """The request was not received in time."""

    code = "request_timeout"
    status = 408


class Overloaded(MawexError):
    """This master has as many connections as it takes; retry later."""

    code = "overloaded"
    status = 503


async def refuse_websocket(scope: Scope, send: Send, error: MawexError) -> None:
    """Refuse a WebSocket handshake with an HTTP error (JSON body) where the server can."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json_body(error.to_body())
        await send(
            {
                "type": "websocket.http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.code})


# -- the request body -------------------------------------------------------------------


class RequestGuard:
    """Reads every HTTP request body within a deadline and a size bound, then calls ``app``.

    The app sees the same body as one ``http.request`` message; later ``receive``
    calls (a long poll watching for the client's disconnect) go to the server.
    WebSocket handshakes past ``max_websockets`` open ones are refused with ``503``
    (uvicorn's ``limit_concurrency`` only refuses plain HTTP requests).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        body_timeout: float,
        max_websockets: int | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.max_websockets = max_websockets
        self.websockets = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await _refuse(
                scope,
                receive,
                send,
                TooLarge(f"request body of {declared} bytes is over the limit of {self.max_body}"),
            )
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # http.disconnect: nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await _refuse(
                            scope,
                            receive,
                            send,
                            TooLarge(f"request body is over the limit of {self.max_body} bytes"),
                        )
                        return
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _refuse(
                scope,
                receive,
                send,
                RequestTimeout(f"request body not received within {self.body_timeout:g} s"),
            )
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.max_websockets is not None and self.websockets >= self.max_websockets:
            await refuse_websocket(scope, send, Overloaded())
            return
        self.websockets += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.websockets -= 1


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, error: Rejected) -> None:
    """Answer ``error`` and close the connection (the rest of the body is not read)."""
    response = error_response(error)
    response.headers["connection"] = "close"
    await response(scope, receive, send)


# -- the request head -------------------------------------------------------------------


class _HeadTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound on each request head.

    The deadline runs from the connection's opening, or from the first byte of each
    later request, to the end of its headers; the bound counts the request line and
    headers. Past either the master answers ``408``/``431`` and closes the connection.
    :func:`guarded_http_protocol` makes a subclass with the limits set.
    """

    header_timeout = 10.0
    max_header_bytes = 64 * 1024
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _head_refused = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._head_refused:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes and not self._head_refused:
            self._refuse(
                b"431 Request Header Fields Too Large",
                TooLarge(f"request head over {self.max_header_bytes} bytes"),
            )
            raise _HeadTooLarge  # stops the parser; uvicorn's own 400 is suppressed

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined head behind a response in progress: not yet
            return
        if not self.transport.is_closing():
            self._refuse(
                b"408 Request Timeout",
                RequestTimeout(f"request head not received within {self.header_timeout:g} s"),
            )

    def _refuse(self, status: bytes, error: Rejected) -> None:
        self._head_refused = True
        body = json_body(error.to_body())
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def guarded_http_protocol(limits: NetLimits) -> type[asyncio.Protocol]:
    """:class:`GuardedHttpToolsProtocol` with ``limits``, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": limits.header_timeout, "max_header_bytes": limits.max_header_bytes},
    )


# -- rates and descriptors --------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` says how long to wait."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float) -> float:
        """Take one token; the seconds to wait before using it (0 when one was saved up)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def raise_fd_limit(connections: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to fit ``connections`` (up to the hard limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            new = soft
        if new < want:
            log.warning(
                "the open-file limit is below --max-connections",
                extra={"action": "fd_limit", "limit": new, "max_connections": connections},
            )
