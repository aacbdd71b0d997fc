"""Lean HTTP/1.1 keep-alive clients for :class:`mawex.AsyncClient` and :class:`mawex.Client`.

The clients talk to masters only: small JSON requests and responses over a few
long-lived connections. httpx's generality costs several hundred microseconds of
CPU per request, more than the master spends on a task; this module does the
same job with httptools' C parser, on asyncio protocols (:class:`LeanHttp`) or on
blocking sockets (:class:`LeanHttpSync`), and hands the flows the same
``httpx.Response`` objects and ``httpx.RequestError`` subclasses, so the retry and
failover logic in :mod:`mawex.client._base` is shared by every path.

A connection carries one request at a time. A request that fails on a reused
connection before any byte of its response arrived is sent again once on a new
connection (the server may have closed an idle connection just then); every
mawex request is idempotent, so this is safe.

With ``busy_poll``, a request's response is awaited without sleeping for that many
seconds: the blocking pool reads its socket without blocking, yielding the CPU
between tries, and the asyncio pool keeps its event loop polling
(:mod:`mawex.busy_poll`). A response that comes within the window finds the client
awake: no wake-up of an idle process, and a CPU kept busy wakes the others on it
(the master's worker, on a small machine) without an interrupt either.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import cast
from urllib.parse import unquote, urlencode, urlsplit

import httptools
import httpx

from mawex.addresses import UNIX_SCHEME
from mawex.busy_poll import BusyPoll

#: Connections kept per master; more requests in flight wait for one.
MAX_CONNECTIONS = 32
#: Bytes asked of a blocking socket at a time.
READ_SIZE = 65536


class _Origin:
    """The idle connections to one ``scheme://host:port`` and a cap on their number,
    on one event loop."""

    __slots__ = ("idle", "loop", "slots")

    def __init__(self, limit: int) -> None:
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(limit)
        self.loop = asyncio.get_running_loop()


class _ResponseParts:
    """httptools' callbacks, collecting the response being read on a connection."""

    def __init__(self) -> None:
        self.closed = False
        #: Responses read on it so far: a failure on a reused connection may be a stale one.
        self.served = 0
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._started = False
        self._keep_alive = False
        self._complete = False

    def _expect_response(self) -> httptools.HttpResponseParser:
        self._parser = parser = httptools.HttpResponseParser(self)
        self._headers, self._body = [], []
        self._started = self._keep_alive = self._complete = False
        return parser

    def _response(
        self, parser: httptools.HttpResponseParser
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        self.served += 1
        return parser.get_status_code(), self._headers, b"".join(self._body), self._keep_alive

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # asked here: once the message is complete the parser has reset this flag
        self._keep_alive = self._parser is not None and self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True


class _Connection(_ResponseParts, asyncio.Protocol):
    """One keep-alive connection; :meth:`roundtrip` sends a request and reads its response."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None

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

    def on_message_complete(self) -> None:
        super().on_message_complete()
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
        parser = self._expect_response()
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
        return self._response(parser)

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
        self._raw_headers = headers
        self._headers: httpx.Headers | None = None
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
    def headers(self) -> httpx.Headers:
        """The response's headers (built when first asked for: a success seldom is)."""
        if self._headers is None:
            self._headers = httpx.Headers(self._raw_headers)
        return self._headers

    @headers.setter
    def headers(self, value: httpx.Headers) -> None:
        self._headers = value

    @property
    def request(self) -> httpx.Request:
        if self._request is None:
            self._request = httpx.Request(self._method, self._url)
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


Origin = tuple[str, str, int]


def _prepare(
    method: str,
    url: str,
    params: Mapping[str, str] | None,
    content: bytes | None,
    head: str,
    headers: Mapping[str, str] | None,
) -> tuple[Origin, str, bytes]:
    """The origin (scheme, host, port), the full URL and the bytes of one request."""
    split = _split(url)
    if split is None:
        raise _named(httpx.UnsupportedProtocol(f"cannot request {url!r}"), method, url)
    origin, netloc, target = split
    if params:
        query = _query(tuple(params.items()))
        url, target = _with_query(url, query), _with_query(target, query)
    body = content or b""
    extra = _header_lines(tuple(headers.items())) if headers else ""
    data = (
        f"{method} {target} HTTP/1.1\r\nhost: {netloc}\r\n{head}{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body
    return origin, url, data


@functools.lru_cache(maxsize=512)
def _split(url: str) -> tuple[Origin, str, str] | None:
    """``url``'s origin, ``host[:port]`` and request target; None if it cannot be requested.

    The origin of a ``http+unix://`` URL is ``("http+unix", socket path, 0)``, and its
    requests name ``localhost`` as their host. Cached: a client asks for the same few
    URLs over and over.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme == UNIX_SCHEME:
        path = unquote(parts.netloc)
        if not path:
            return None
        return (scheme, path, 0), "localhost", _target(parts.path, parts.query)
    host = parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        return None
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, host, port), parts.netloc, _target(parts.path, parts.query)


def _target(path: str, query: str) -> str:
    target = path or "/"
    return f"{target}?{query}" if query else target


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@functools.lru_cache(maxsize=64)
def _header_lines(headers: tuple[tuple[str, str], ...]) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in headers)


@functools.lru_cache(maxsize=256)
def _query(params: tuple[tuple[str, str], ...]) -> str:
    """``params`` URL-encoded (cached: a client's query strings repeat)."""
    return urlencode(params)


def _where(origin: Origin) -> str:
    scheme, host, port = origin
    return f"unix:{host}" if scheme == UNIX_SCHEME else f"{host}:{port}"


def _unix_connection(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class _Pool(abc.ABC):
    """What both pools are configured with.

    ``headers`` go with every request (authorization, user agent); ``ssl_context``
    is used for ``https`` URLs; ``timeout`` is the default when a request gives none;
    at most ``max_connections`` are open to one master; ``busy_poll`` seconds each
    response is awaited without sleeping (0: off; see the module docstring).
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: httpx.Timeout | None = None,
        max_connections: int = MAX_CONNECTIONS,
        busy_poll: float = 0.0,
    ) -> None:
        #: Sent with every request.
        self.headers = dict(headers or {})
        self._head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self._ssl = ssl_context
        #: Used by requests that give no timeout of their own.
        self.timeout = timeout or httpx.Timeout(10.0)
        self._max = max_connections
        #: Seconds a response is awaited without sleeping (0: off).
        self.busy_poll = busy_poll
        #: True once the pool was closed.
        self.is_closed = False
        self._init_connections()

    @abc.abstractmethod
    def _init_connections(self) -> None:
        """Set up the pool's empty connection bookkeeping."""


class LeanHttp(_Pool):
    """Requests to masters over pooled HTTP/1.1 connections, answering ``httpx.Response``
    (the settings: :class:`_Pool`)."""

    def _init_connections(self) -> None:
        self._origins: dict[Origin, _Origin] = {}
        self._poller = BusyPoll(self.busy_poll) if self.busy_poll else None

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
        if self.is_closed:
            raise _named(httpx.ConnectError("the client is closed"), method, url)
        key, url, data = _prepare(method, url, params, content, self._head, headers)
        limits = timeout or self.timeout
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
                if self._poller is not None:
                    self._poller.kick()
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

    async def _connection(self, origin: _Origin, key: Origin, limits: httpx.Timeout) -> _Connection:
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
                if scheme == UNIX_SCHEME:
                    _, connection = await loop.create_unix_connection(_Connection, host)
                else:
                    _, connection = await loop.create_connection(
                        _Connection, host, port, ssl=context
                    )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {_where(key)} timed out") from None
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


# -- blocking ------------------------------------------------------------------------------


class _BlockingConnection(_ResponseParts):
    """One keep-alive connection on a blocking socket, used by one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def roundtrip(
        self, data: bytes, limits: httpx.Timeout, busy_poll: float = 0.0
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send ``data`` (a whole request); the response's status, headers, body and
        whether the connection may carry another request. The response's first bytes
        are awaited without sleeping for ``busy_poll`` seconds."""
        sock = self.sock
        parser = self._expect_response()
        try:
            sock.settimeout(limits.write)
            sock.sendall(data)
        except TimeoutError:
            self.close()
            raise httpx.WriteTimeout("timed out sending the request") from None
        except OSError as exc:  # the server closed it (a reused connection: sent again)
            raise self._closed_early(str(exc) or type(exc).__name__) from None
        try:
            early, waited = _read_awake(sock, busy_poll, limits.read) if busy_poll else (None, 0.0)
            # the first byte's wait is the read timeout, polling included
            sock.settimeout(None if limits.read is None else limits.read - waited)
            while not self._complete:
                if early is None:
                    chunk = sock.recv(READ_SIZE)
                else:
                    chunk, early = early, None
                if not chunk:
                    raise self._closed_early("the server closed the connection")
                self._started = True
                parser.feed_data(chunk)
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("timed out waiting for the master's response") from None
        except httptools.HttpParserError as exc:
            self.close()
            raise httpx.RemoteProtocolError(f"malformed HTTP response: {exc}") from None
        except OSError as exc:  # reset, broken pipe, TLS errors
            raise self._closed_early(str(exc) or type(exc).__name__) from None
        finally:
            self._parser = None
        return self._response(parser)

    def _closed_early(self, message: str) -> httpx.RequestError:
        self.close()
        return httpx.RemoteProtocolError(message) if self._started else _StaleConnection(message)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


def _read_awake(
    sock: socket.socket, window: float, timeout: float | None
) -> tuple[bytes | None, float]:
    """What ``sock`` receives within ``window`` seconds, tried without blocking and
    yielding the CPU between tries, or (None, the seconds waited); TimeoutError if
    ``timeout`` comes first."""
    started = time.monotonic()
    until = started + (window if timeout is None else min(window, timeout))
    sock.setblocking(False)
    while True:
        try:
            return sock.recv(READ_SIZE), 0.0
        except (BlockingIOError, ssl.SSLWantReadError):
            now = time.monotonic()
            if now >= until:
                if timeout is not None and now - started >= timeout:
                    raise TimeoutError from None
                return None, now - started
            os.sched_yield()


class LeanHttpSync(_Pool):
    """:class:`LeanHttp` on blocking sockets, for :class:`mawex.Client`; safe to share
    between threads (each request has a connection to itself)."""

    def _init_connections(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[_BlockingConnection]] = {}
        #: Per origin, one token per connection that may be open (a C-level queue: a
        #: semaphore in Python costs more than the rest of the request's bookkeeping).
        self._slots: dict[Origin, queue.SimpleQueue[None]] = {}

    def request(
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
        if self.is_closed:
            raise _named(httpx.ConnectError("the client is closed"), method, url)
        key, url, data = _prepare(method, url, params, content, self._head, headers)
        limits = timeout or self.timeout
        with self._lock:
            slots = self._slots.get(key)
            if slots is None:
                slots = self._slots[key] = queue.SimpleQueue()
                for _ in range(self._max):
                    slots.put(None)
        try:
            slots.get(timeout=limits.pool)
        except queue.Empty:
            raise _named(
                httpx.PoolTimeout("no free connection to the master"), method, url
            ) from None
        try:
            for attempt in range(2):
                connection = self._connection(key, limits)
                try:
                    status, raw_headers, payload, keep = connection.roundtrip(
                        data, limits, self.busy_poll
                    )
                except _StaleConnection:
                    if connection.served and attempt == 0:
                        continue
                    raise
                if keep and not connection.closed and not self.is_closed:
                    with self._lock:
                        self._idle.setdefault(key, []).append(connection)
                else:
                    connection.close()
                return LeanResponse(status, raw_headers, payload, method, url)
            raise AssertionError("unreachable")  # pragma: no cover
        except httpx.RequestError as exc:
            _named(exc, method, url)
            raise
        finally:
            slots.put(None)

    def _connection(self, key: Origin, limits: httpx.Timeout) -> _BlockingConnection:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if not connection.closed:
                    return connection
        scheme, host, port = key
        try:
            if scheme == UNIX_SCHEME:
                sock = _unix_connection(host, limits.connect)
                return _BlockingConnection(sock)
            sock = socket.create_connection((host, port), timeout=limits.connect)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {_where(key)} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                context = self._ssl or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"TLS handshake with {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return _BlockingConnection(sock)

    def close(self) -> None:
        """Close every idle connection; later requests fail."""
        self.is_closed = True
        with self._lock:
            idle = [c for connections in self._idle.values() for c in connections]
            self._idle.clear()
        for connection in idle:
            connection.close()
