"""The master's HTTP/1.1 protocol: uvicorn's httptools protocol, guarded and lean.

:class:`GuardedHttpToolsProtocol` adds what uvicorn does not bound on its own, and
writes each response once:

- a deadline on each request's head (``header_timeout``: from the connection's
  opening, or from the first byte of each later request, to the end of its headers)
  and a bound on its size (``max_header_bytes``). uvicorn only times out *idle*
  keep-alive connections, and any byte resets that timer, so without this a client
  could hold a connection open forever by sending nothing, or a header a byte at a time;
- a deadline on each request's body (``body_timeout``, from the end of its headers);
- a fixed-length response's head and body in one write: one wake-up of the client,
  where uvicorn writes each ASGI message as it comes;
- a client's per-task requests answered without the ASGI app, by the app's
  :class:`mawex.server.app.DirectRequests`: no ASGI messages, request cycle task or
  middleware stack, the response written in one piece. A request goes that way only
  when uvicorn would have started the app on it with its body in hand: within the
  handler's bound and uvicorn's read buffer, with a ``Content-Length`` (no chunks),
  without ``Expect: 100-continue``, in turn behind pipelined requests before it; any
  other goes to the app as usual.

Past the first request of a connection (whose deadline runs from the opening), a
timer runs only while a request is still arriving after a read: the usual request
comes whole in one read and costs none.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from mawex.errors import Rejected, TooLarge
from mawex.server.limits import NetLimits, RequestTimeout
from mawex.server.responses import json_body

if TYPE_CHECKING:  # for typing only: the app's module is this one's user
    from mawex.server.app import DirectRequests

_IDLE, _HEAD, _BODY = 0, 1, 2


class _HeadTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines on each request's head and body, a
    size bound on its head, and one write per fixed-length response.

    Past a deadline the master answers ``408``, past the head's bound ``431``, and
    closes the connection. :func:`guarded_http_protocol` makes a subclass with the
    limits set.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    max_header_bytes = 64 * 1024
    direct: DirectRequests | None = None
    _deadline: asyncio.TimerHandle | None = None
    #: A request to answer directly once its body is in.
    _unanswered: RequestResponseCycle | None = None
    _reading = _HEAD  # a new connection owes a request head
    _head_bytes = 0
    _refused = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm(self.header_timeout)  # the first head's deadline runs from the opening

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading != _IDLE and self._deadline is None and not self._refused:
            self._arm(self.header_timeout if self._reading == _HEAD else self.body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = _HEAD
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle is before:  # a WebSocket handshake: no longer ours
            self._reading = _IDLE
            return
        self._reading = _BODY
        if cycle is not self._unanswered:  # the app's to answer: one write per response
            cycle.transport = cast(asyncio.Transport, _OneWrite(cycle))  # a stand-in

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading = _IDLE
        super().on_message_complete()
        cycle = self._unanswered
        if cycle is not None:
            self._unanswered = None
            self._answer_directly(cycle)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if app is self.app and self._is_direct(cycle):
            if cycle.more_body:
                self._unanswered = cycle
            else:  # a pipelined request, whole, whose turn has come
                self._answer_directly(cycle)
            return
        super()._start_asgi_task(cycle, app)

    def _is_direct(self, cycle: RequestResponseCycle) -> bool:
        direct = self.direct
        scope = cycle.scope
        if (
            direct is None
            or cycle.waiting_for_100_continue
            or not direct.takes(scope["method"], scope["path"])
        ):
            return False
        bound = min(direct.max_body, HIGH_WATER_LIMIT)  # past it uvicorn pauses reading
        for name, value in scope["headers"]:
            if name == b"content-length":
                if int(value) > bound:
                    return False
            elif name == b"transfer-encoding":
                return False
        return True

    def _answer_directly(self, cycle: RequestResponseCycle) -> None:
        task = self.loop.create_task(self._answer(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, cycle: RequestResponseCycle) -> None:
        """What uvicorn's request cycle does for the app, for a direct request."""
        assert self.direct is not None
        scope = cycle.scope
        try:
            status, headers, content = await self.direct.answer(
                scope["method"],
                scope["path"],
                scope["query_string"],
                scope["headers"],
                bytes(cycle.body),
            )
        except Exception as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            await cycle.send_500_response()
            return
        if self.flow.write_paused:
            await self.flow.drain()  # a lost connection resumes writing too
        if not self.transport.is_closing():
            self._respond(cycle, status, headers, content)

    def _respond(
        self,
        cycle: RequestResponseCycle,
        status: int,
        headers: list[tuple[bytes, bytes]],
        content: bytes,
    ) -> None:
        keep_alive = cycle.keep_alive
        response = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            response += (name, b": ", value, b"\r\n")
        response.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        response.append(content)
        self.transport.write(b"".join(response))
        cycle.response_complete = True  # what uvicorn's protocol asks of a cycle
        if not keep_alive:
            self.transport.close()
        cycle.on_response()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes and not self._refused:
            self._refuse(
                b"431 Request Header Fields Too Large",
                TooLarge(f"request head over {self.max_header_bytes} bytes"),
            )
            raise _HeadTooLarge  # stops the parser; uvicorn's own 400 is suppressed

    def _arm(self, seconds: float) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._reading == _BODY:
            if self.pipeline:  # queued behind a response in progress: not read yet
                self._arm(self.body_timeout)
            elif self.cycle is not None and self.cycle.response_started:
                self.transport.close()  # answered without its body, which never came
            else:
                self._refuse(
                    b"408 Request Timeout",
                    RequestTimeout(f"request body not received within {self.body_timeout:g} s"),
                )
        elif self.cycle is not None and not self.cycle.response_complete:
            self._arm(self.header_timeout)  # a pipelined head behind a response in progress
        else:
            self._refuse(
                b"408 Request Timeout",
                RequestTimeout(f"request head not received within {self.header_timeout:g} s"),
            )

    def _refuse(self, status: bytes, error: Rejected) -> None:
        self._refused = True
        body = json_body(error.to_body())
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


class _OneWrite:
    """One response's transport: holds a fixed-length response's head until its body
    comes, and writes both at once; then steps aside for the rest of the response.

    What is written before the response starts (``100 Continue``) goes at once, and
    so does the head of a response without a body to follow (``HEAD``, no length, or
    streamed as chunks). Closing writes a head still held.
    """

    __slots__ = ("cycle", "held", "transport")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle
        self.transport = cycle.transport
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.cycle.transport = self.transport
            self.transport.write(held + data)
            return
        cycle = self.cycle
        if (
            cycle.response_started
            and cycle.chunked_encoding is False
            and cycle.expected_content_length
            and cycle.scope["method"] != "HEAD"
        ):
            self.held = data
        else:
            self.transport.write(data)

    def close(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def guarded_http_protocol(
    limits: NetLimits, direct: DirectRequests | None = None
) -> type[asyncio.Protocol]:
    """:class:`GuardedHttpToolsProtocol` with ``limits``, answering what ``direct``
    takes itself, for ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": limits.header_timeout,
            "body_timeout": limits.body_timeout,
            "max_header_bytes": limits.max_header_bytes,
            "direct": direct,
        },
    )
