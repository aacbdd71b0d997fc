"""A lean HTTP/1.1 keep-alive client for :class:`mawex.AsyncClient`'s requests.

The client talks to masters only: small JSON requests and responses over a few
long-lived connections. httpx's generality costs several hundred microseconds of
CPU per request, more than the master spends on a task; this module does the
same job on asyncio protocols with httptools' C parser, and hands the flows the
same ``httpx.Response`` objects and ``httpx.RequestError`` subclasses, so the
retry and failover logic in :mod:`mawex.client._base` is shared by both paths.

A connection carries one request at a time. A request that fails on a reused
connection before any byte of its response arrived is sent again once on a new
connection (the server may have closed an idle connection just then); every
mawex request is idempotent, so this is safe.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlencode, urlsplit

import httptools
import httpx

#: Connections kept per master; more requests in flight wait for one.
MAX_CONNECTIONS = 32


class _Origin:
    """The idle connections to one ``scheme://host:port`` and a cap on their number,
    on one event loop."""

    __slots__ = ("idle", "loop", "slots")

    def __init__(self, limit: int) -> None:
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(limit)
        self.loop = asyncio.get_running_loop()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`roundtrip` sends a request and reads its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Responses read on it so far: a failure on a reused connection may be a stale one.
        self.served = 0
        self._waiter: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._started = False
        self._keep_alive = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._started = True
        if self._parser is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            message = "the server closed the connection"
            error: Exception = (
                httpx.RemoteProtocolError(message) if self._started else _StaleConnection(message)
            )
            self._waiter.set_exception(error)

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # asked here: once the message is complete the parser has reset this flag
        self._keep_alive = self._parser is not None and self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- use --

    async def roundtrip(
        self, data: bytes, read_timeout: float | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send ``data`` (a whole request); the response's status, headers, body and
        whether the connection may carry another request."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._parser = parser = httptools.HttpResponseParser(self)
        self._headers, self._body, self._started, self._keep_alive = [], [], False, False
        self.transport.write(data)
        try:
            async with asyncio.timeout(read_timeout):
                await waiter
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("timed out waiting for the master's response") from None
        finally:
            self._waiter = None
            self._parser = None
        self.served += 1
        return (
            parser.get_status_code(),
            self._headers,
            b"".join(self._body),
            self._keep_alive,
        )

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _StaleConnection(httpx.ReadError):
    """A reused connection closed before its response began: safe to send again."""


def _named(error: httpx.RequestError, method: str, url: str) -> httpx.RequestError:
    """``error``, naming the request it is about (built only when something failed)."""
    error.request = httpx.Request(method, url)
    return error


class LeanResponse(httpx.Response):
    """An ``httpx.Response`` of a whole body already read, built without httpx's
    stream and request machinery, which cost more than the rest of a request here.

    Its ``request`` (method and URL only) is made when something asks for it.
    """

    def __init__(
        self,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
        content: bytes,
        method: str,
        url: str,
    ) -> None:
        self.status_code = status_code
        self.headers = httpx.Headers(headers)
        self._content = content
        self._request: httpx.Request | None = None
        self._method = method
        self._url = url
        self.next_request = None
        self.extensions = {}
        self.history = []
        self.is_closed = True
        self.is_stream_consumed = True
        self.default_encoding = "utf-8"
        self.stream = httpx.ByteStream(content)
        self._num_bytes_downloaded = len(content)

    @property
    def request(self) -> httpx.Request:
        if self._request is None:
            self._request = httpx.Request(self._method, self._url)
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


class LeanHttp:
    """Requests to masters over pooled HTTP/1.1 connections, answering ``httpx.Response``.

    ``headers`` go with every request (authorization, user agent); ``ssl_context``
    is used for ``https`` URLs; ``timeout`` is the default when a request gives none.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: httpx.Timeout | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        #: Sent with every request.
        self.headers = dict(headers or {})
        self._head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self._ssl = ssl_context
        #: Used by requests that give no timeout of their own.
        self.timeout = timeout or httpx.Timeout(10.0)
        self._max = max_connections
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        #: True once :meth:`aclose` was called.
        self.is_closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send one request and read its whole response; raises ``httpx.RequestError``."""
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        if self.is_closed:
            raise _named(httpx.ConnectError("the client is closed"), method, url)
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise _named(httpx.UnsupportedProtocol(f"cannot request {url!r}"), method, url)
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        body = content or b""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        data = (
            f"{method} {target} HTTP/1.1\r\nhost: {parts.netloc}\r\n{self._head}{extra}"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        limits = timeout or self.timeout
        key = (scheme, host, port)
        origin = self._origins.get(key)
        if origin is None or origin.loop is not asyncio.get_running_loop():
            # (a client used from a new event loop cannot reuse the old loop's sockets)
            origin = self._origins[key] = _Origin(self._max)
        try:
            if origin.slots.locked():  # (a timeout only when there is something to wait for)
                async with asyncio.timeout(limits.pool):
                    await origin.slots.acquire()
            else:
                await origin.slots.acquire()
        except TimeoutError:
            error = httpx.PoolTimeout("no free connection to the master")
            raise _named(error, method, url) from None
        try:
            for attempt in range(2):
                connection = await self._connection(origin, key, limits)
                try:
                    status, raw_headers, payload, keep = await connection.roundtrip(
                        data, limits.read
                    )
                except _StaleConnection:
                    connection.close()
                    if connection.served and attempt == 0:
                        continue
                    raise
                except httpx.RequestError:
                    connection.close()
                    raise
                if keep and not connection.closed:
                    origin.idle.append(connection)
                else:
                    connection.close()
                return LeanResponse(status, raw_headers, payload, method, url)
            raise AssertionError("unreachable")  # pragma: no cover
        except httpx.RequestError as exc:
            _named(exc, method, url)
            raise
        finally:
            origin.slots.release()

    async def _connection(
        self, origin: _Origin, key: tuple[str, str, int], limits: httpx.Timeout
    ) -> _Connection:
        while origin.idle:
            connection = origin.idle.pop()
            if not connection.closed:
                return connection
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(limits.connect):
                _, connection = await loop.create_connection(_Connection, host, port, ssl=context)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return connection

    async def aclose(self) -> None:
        """Close every idle connection; later requests fail."""
        self.is_closed = True
        for origin in self._origins.values():
            for connection in origin.idle:
                connection.close()
            origin.idle.clear()
