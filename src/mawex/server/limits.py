"""Network limits of a master: connections, read deadlines, request sizes, message rates.

What uvicorn does not bound on its own, this module and
:mod:`mawex.server.http_protocol` (the deadlines on each request's head and body,
the bound on its head) do:

- :class:`RequestGuard`: an ASGI middleware that reads each request body, at most
  ``max_body`` bytes (checked while it streams in, and up front from
  ``Content-Length``), answering ``413`` otherwise.
- :class:`TokenBucket`: the per-session frame rate of the worker channel.
- :func:`raise_fd_limit`: room in ``RLIMIT_NOFILE`` for ``max_connections``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """Reads every HTTP request body within a size bound, then calls ``app``.

    The body's deadline is the protocol's (:mod:`mawex.server.http_protocol`), which
    answers ``408`` and closes the connection; the read here then ends too.

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
        max_websockets: int | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
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


# -- rates and descriptors --------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` says how long to wait."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.stamp = time.monotonic() if now is None else now

    def available(self, now: float) -> bool:
        """Whether a token is saved up at ``now`` (nothing is taken)."""
        return min(self.burst, self.tokens + (now - self.stamp) * self.rate) >= 1.0

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
