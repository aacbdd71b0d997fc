"""The clients' HTTP/1.1 connection pools against real sockets on 127.0.0.1.

Each test runs a small asyncio HTTP server that answers as scripted and records
the connections and requests it saw, and runs once with the asyncio pool
(``AsyncClient``'s) and once with the blocking one (``Client``'s, called from a
thread so that the server keeps running).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trustme

from mawex.client._http import LeanHttp, LeanHttpSync

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def serve(answer: Answer, context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """``answer(request, writer)`` writes the response; returning False ends the connection."""
    server = Server("")
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        server.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                server.requests.append(request)
                keep = await answer(request, writer)
                await writer.drain()
                if not keep:
                    break
        finally:
            writer.close()
            handlers.discard(task)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        for task in list(handlers):
            task.cancel()
        await listener.wait_closed()


class Pool:
    """:class:`LeanHttp` or :class:`LeanHttpSync` behind the asyncio pool's interface."""

    def __init__(self, http: LeanHttp | LeanHttpSync) -> None:
        self.http = http

    async def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        if isinstance(self.http, LeanHttp):
            return await self.http.request(method, url, **options)
        return await asyncio.to_thread(self.http.request, method, url, **options)

    async def aclose(self) -> None:
        if isinstance(self.http, LeanHttp):
            await self.http.aclose()
        else:
            self.http.close()


MakePool = Callable[..., Pool]


@pytest.fixture(params=["asyncio", "blocking"])
def make(request: pytest.FixtureRequest) -> MakePool:
    """Makes a pool of the kind under test with the given options."""
    kind = LeanHttp if request.param == "asyncio" else LeanHttpSync
    return lambda **options: Pool(kind(**options))


async def always_ok(request: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(ok())
    return True


async def test_sequential_requests_share_one_connection(make: MakePool) -> None:
    async with serve(always_ok) as server:
        http = make(headers={"authorization": "Bearer s3cret"})
        for i in range(5):
            response = await http.request(
                "POST",
                f"{server.url}/v1/tasks",
                params={"n": str(i), "q": "a b"},
                content=b'{"x":1}',
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200
            assert response.json() == {"ok": True}
            assert response.request.url.path == "/v1/tasks"
        await http.aclose()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/tasks?n=0&q=a+b HTTP/1.1\r\n")
    assert b"authorization: Bearer s3cret\r\n" in first
    assert b"content-type: application/json\r\n" in first
    assert first.endswith(b'\r\n\r\n{"x":1}')


def answer_after(seconds: float) -> Answer:
    """A handler that answers ``200`` after ``seconds``."""

    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(seconds)
        writer.write(ok())
        return True

    return slow


async def test_concurrent_requests_use_at_most_the_pool_size(make: MakePool) -> None:
    async with serve(answer_after(0.02)) as server:
        http = make(max_connections=3)
        responses = await asyncio.gather(
            *(http.request("GET", f"{server.url}/v1/state") for _ in range(12))
        )
        await http.aclose()
    assert [r.status_code for r in responses] == [200] * 12
    assert server.connections == 3


async def test_waiting_for_a_free_connection_past_the_pool_timeout(make: MakePool) -> None:
    async with serve(answer_after(0.5)) as server:
        http = make(max_connections=1)
        url = f"{server.url}/v1/state"
        first = asyncio.ensure_future(http.request("GET", url))
        while not server.requests:  # until the first holds the only connection
            await asyncio.sleep(0.005)
        with pytest.raises(httpx.PoolTimeout):
            await http.request("GET", url, timeout=httpx.Timeout(5.0, pool=0.05))
        assert (await first).status_code == 200
        # the slot came back: the next request gets the connection
        assert (await http.request("GET", url)).status_code == 200
        await http.aclose()
    assert server.connections == 1


async def test_chunked_response_is_decoded(make: MakePool) -> None:
    async def chunked(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"4\r\n[1,2\r\n2\r\n,3\r\n1\r\n]\r\n0\r\n\r\n"
        )
        return True

    async with serve(chunked) as server:
        http = make()
        response = await http.request("GET", f"{server.url}/x")
        again = await http.request("GET", f"{server.url}/x")
        await http.aclose()
    assert response.json() == [1, 2, 3] and again.json() == [1, 2, 3]
    assert server.connections == 1


async def test_a_connection_closed_while_idle_is_replaced_once(make: MakePool) -> None:
    async def one_per_connection(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())  # keep-alive promised, then the server closes it anyway
        return False

    async with serve(one_per_connection) as server:
        http = make()
        first = await http.request("GET", f"{server.url}/a")
        await asyncio.sleep(0.05)  # the close reaches the client while idle
        second = await http.request("GET", f"{server.url}/b")
        await http.aclose()
    assert first.status_code == second.status_code == 200
    assert server.connections == 2
    assert [r.split(b" ")[1] for r in server.requests] == [b"/a", b"/b"]


async def test_a_stale_connection_noticed_only_on_write_is_retried(make: MakePool) -> None:
    served: list[asyncio.StreamWriter] = []

    async def remember(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        served.append(writer)
        return True

    async with serve(remember) as server:
        http = make()
        await http.request("GET", f"{server.url}/a")
        # the server drops the idle connection; the client has not read the EOF yet
        served[0].transport.abort()
        second = await http.request("GET", f"{server.url}/b")
        await http.aclose()
    assert second.status_code == 200
    assert server.connections == 2


async def test_connection_close_is_honoured(make: MakePool) -> None:
    async def closing(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(extra=b"connection: close\r\n"))
        return False

    async with serve(closing) as server:
        http = make()
        for _ in range(3):
            assert (await http.request("GET", f"{server.url}/")).status_code == 200
        await http.aclose()
    assert server.connections == 3


async def test_refused_connection_is_a_connect_error(make: MakePool) -> None:
    async with serve(always_ok) as server:
        url = server.url
    http = make()
    with pytest.raises(httpx.ConnectError) as caught:
        await http.request("GET", f"{url}/v1/state")
    assert caught.value.request.url.path == "/v1/state"
    await http.aclose()


async def test_slow_answer_is_a_read_timeout_and_the_connection_is_dropped(make: MakePool) -> None:
    async def stall_first(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/slow" in request.split(b"\r\n")[0]:
            await asyncio.sleep(5)
        writer.write(ok())
        return True

    async with serve(stall_first) as server:
        http = make()
        with pytest.raises(httpx.ReadTimeout):
            await http.request("GET", f"{server.url}/slow", timeout=httpx.Timeout(0.1))
        fast = await http.request("GET", f"{server.url}/fast")
        await http.aclose()
    assert fast.status_code == 200
    assert server.connections == 2  # the late answer can never be read as /fast's


async def test_a_response_cut_short_is_a_protocol_error_and_not_resent(make: MakePool) -> None:
    async def cut(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
        return False

    async with serve(cut) as server:
        http = make()
        with pytest.raises(httpx.RemoteProtocolError):
            await http.request("POST", f"{server.url}/v1/tasks", content=b"{}")
        await http.aclose()
    assert len(server.requests) == 1


async def test_garbage_is_a_protocol_error(make: MakePool) -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        return True

    async with serve(garbage) as server:
        http = make()
        with pytest.raises(httpx.RemoteProtocolError):
            await http.request("GET", f"{server.url}/")
        await http.aclose()


async def test_params_join_a_query_already_in_the_url(make: MakePool) -> None:
    async with serve(always_ok) as server:
        http = make()
        for path in ("/a?x=1", "/b", "/a?x=1"):
            response = await http.request("GET", f"{server.url}{path}", params={"wait": "2"})
        await http.aclose()
    assert [r.split(b"\r\n", 1)[0] for r in server.requests] == [
        b"GET /a?x=1&wait=2 HTTP/1.1",
        b"GET /b?wait=2 HTTP/1.1",
        b"GET /a?x=1&wait=2 HTTP/1.1",
    ]
    assert str(response.request.url) == f"{server.url}/a?x=1&wait=2"


async def test_unsupported_url_is_refused(make: MakePool) -> None:
    http = make()
    with pytest.raises(httpx.UnsupportedProtocol):
        await http.request("GET", "ftp://127.0.0.1/x")


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server's context with a certificate for 127.0.0.1 from a private CA, and a
    client's context that trusts that CA."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    return server_context, trusted


async def test_https_with_a_private_ca(
    make: MakePool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, trusted = tls
    async with serve(always_ok, server_context) as server:
        http = make(ssl_context=trusted)
        assert (await http.request("GET", f"{server.url}/")).json() == {"ok": True}
        assert (await http.request("GET", f"{server.url}/")).status_code == 200
        await http.aclose()
        untrusting = make(ssl_context=ssl.create_default_context())
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request("GET", f"{server.url}/")
    assert server.connections == 1


def test_on_uvloop() -> None:
    """uvloop's transports are not ``asyncio.Transport`` subclasses; the pool takes them."""
    import uvloop

    async def main() -> tuple[list[int], int]:
        async with serve(always_ok) as server:
            http = LeanHttp()
            statuses = [(await http.request("GET", f"{server.url}/")).status_code for _ in range(3)]
            await http.aclose()
        return statuses, server.connections

    assert uvloop.run(main()) == ([200, 200, 200], 1)


async def test_a_response_reads_like_any_httpx_response(make: MakePool) -> None:
    async with serve(always_ok) as server:
        http = make()
        response = await http.request("GET", f"{server.url}/v1/state", params={"a": "1"})
        await http.aclose()
    assert isinstance(response, httpx.Response)
    assert response.is_success and response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"ok":true}' and response.text == '{"ok":true}'
    assert response.json() == {"ok": True}
    assert str(response.request.url) == f"{server.url}/v1/state?a=1"
    assert response.request.method == "GET"


# -- busy_poll: replies awaited without sleeping -------------------------------------------


async def scripted_by_path(request: bytes, writer: asyncio.StreamWriter) -> bool:
    """/now answers at once, /late after 50 ms, /halves in two writes 30 ms apart,
    /close closes without a byte."""
    path = request.split(b" ", 2)[1]
    if path.startswith(b"/late"):
        await asyncio.sleep(0.05)
    elif path.startswith(b"/halves"):
        whole = ok(b'{"halves":true}')
        writer.write(whole[:20])
        await writer.drain()
        await asyncio.sleep(0.03)
        writer.write(whole[20:])
        return True
    elif path.startswith(b"/close"):
        return False
    writer.write(ok(b'{"path":"' + path + b'"}'))
    return True


@pytest.mark.parametrize("window", [0.001, 0.5])
async def test_busy_poll_reads_a_reply_within_or_past_its_window(
    make: MakePool, window: float
) -> None:
    async with serve(scripted_by_path) as server:
        http = make(busy_poll=window)
        for path in ("/now", "/late", "/now", "/halves", "/late"):
            response = await http.request("GET", f"{server.url}{path}")
            assert response.status_code == 200
            assert response.json() == ({"halves": True} if path == "/halves" else {"path": path})
        with pytest.raises(httpx.RequestError):
            await http.request("GET", f"{server.url}/close")
        assert (await http.request("GET", f"{server.url}/now")).json() == {"path": "/now"}
        with pytest.raises(httpx.ReadTimeout):  # the read timeout still holds past the window
            await http.request("GET", f"{server.url}/late", timeout=httpx.Timeout(0.02))
        await http.aclose()
    assert server.connections == 3  # one more after /close, one after the timeout


async def test_busy_poll_over_tls(
    make: MakePool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, trusted = tls
    async with serve(scripted_by_path, server_context) as server:
        http = make(ssl_context=trusted, busy_poll=0.5)
        for path in ("/now", "/late", "/halves"):
            assert (await http.request("GET", f"{server.url}{path}")).status_code == 200
        await http.aclose()
    assert server.connections == 1


@pytest.mark.parametrize("window", [0.0, 0.5])
async def test_busy_poll_keeps_the_waiting_caller_on_the_cpu(make: MakePool, window: float) -> None:
    """Without it a caller sleeps while it waits; with it, it polls (and uses CPU)."""

    async def after_200_ms(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.2)
        writer.write(ok())
        return True

    async with serve(after_200_ms) as server:
        pool = make(busy_poll=window)
        url = f"{server.url}/"
        if isinstance(pool.http, LeanHttp):  # the loop (the server's too) polls or sleeps
            started = time.thread_time()
            await pool.request("GET", url)
            cpu = time.thread_time() - started
        else:  # the calling thread polls its socket or blocks on it

            def timed() -> float:
                started = time.thread_time()
                assert isinstance(pool.http, LeanHttpSync)
                pool.http.request("GET", url)
                return time.thread_time() - started

            cpu = await asyncio.to_thread(timed)
        await pool.aclose()
    if window:
        assert cpu > 0.05, cpu
    else:
        assert cpu < 0.02, cpu
