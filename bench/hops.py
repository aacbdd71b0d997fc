"""What one hop between two Python processes (or two threads) costs on this machine.

A sequential ``run()`` crosses four process boundaries (client → master → worker →
master → client) and, for a plain executor, two thread boundaries in the worker
(its event loop → the executor thread → back). This measures the floor of each
kind of hop with nothing mawex-specific on top, as ping-pongs of a 100-byte message
(``--rounds`` of them after 200 unmeasured), p50/p90 of the whole exchange:

- ``tcp``: two uvloop processes echoing over a loopback socket (asyncio protocols);
- ``ws``: the worker channel's stack, uvicorn + Starlette ``WebSocketRoute`` (the
  master's settings and WebSocket protocol) echoing to the worker's ``websockets``
  client connection;
- ``http``: the client's stack, ``mawex.Client``'s blocking HTTP/1.1 connection
  posting to a plain-ASGI handler on uvicorn with the master's HTTP protocol;
- ``thread``: in one process, the event loop handing a call to a thread and hearing
  of its end through ``call_soon_threadsafe`` (what the local sandbox does).

Run: ``.venv/bin/python bench/hops.py [--rounds 5000] [--kinds tcp,ws,http,thread]``
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import Processes, free_port, percentile, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

MESSAGE = b'{"t":"assign","id":"t1","group":"rt","attempt":1,"payload":null,"timeout_s":null}'
KINDS = ("tcp", "ws", "http", "thread")
WARMUP = 200


# -- the echoing side (a process of its own) ------------------------------------------------


async def _serve(kind: str, port: int) -> None:
    if kind == "tcp":

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from mawex.server.http_protocol import guarded_http_protocol
    from mawex.server.limits import NetLimits
    from mawex.server.ws_protocol import LeanWebSocketsProtocol

    async def echo_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    starlette = Starlette(routes=[WebSocketRoute("/ws", echo_ws)])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await starlette(scope, receive, send)
        body = (await receive())["body"]
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        http=guarded_http_protocol(NetLimits()),
        ws=LeanWebSocketsProtocol,
        ws_per_message_deflate=False,
    )
    await uvicorn.Server(config).serve()


# -- the measuring side ----------------------------------------------------------------------


def _timed(exchange: Callable[[], None], rounds: int) -> list[float]:
    clock = time.perf_counter
    samples = []
    for _ in range(WARMUP + rounds):
        started = clock()
        exchange()
        samples.append(clock() - started)
    return samples[WARMUP:]


async def _timed_async(exchange: Callable[[], Any], rounds: int) -> list[float]:
    clock = time.perf_counter
    samples = []
    for _ in range(WARMUP + rounds):
        started = clock()
        await exchange()
        samples.append(clock() - started)
    return samples[WARMUP:]


async def _tcp(port: int, rounds: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def exchange() -> None:
        writer.write(MESSAGE)
        await reader.readexactly(len(MESSAGE))

    try:
        return await _timed_async(exchange, rounds)
    finally:
        writer.close()


async def _ws(port: int, rounds: int) -> list[float]:
    from websockets.asyncio.client import connect

    from mawex.worker.connection import WorkerConnection

    text = MESSAGE.decode()
    url = f"ws://127.0.0.1:{port}/ws"
    async with connect(url, compression=None, create_connection=WorkerConnection) as websocket:

        async def exchange() -> None:
            await websocket.send(text)
            await websocket.recv()

        return await _timed_async(exchange, rounds)


def _http(port: int, rounds: int) -> list[float]:
    from mawex.client._http import LeanHttpSync

    pool = LeanHttpSync()
    url = f"http://127.0.0.1:{port}/v1/tasks"

    def exchange() -> None:
        if pool.request("POST", url, content=MESSAGE).status_code != 200:
            raise RuntimeError("the echo server did not answer 200")

    try:
        return _timed(exchange, rounds)
    finally:
        pool.close()


async def _thread(rounds: int) -> list[float]:
    jobs: queue.SimpleQueue[tuple[asyncio.Future[bytes], bytes] | None] = queue.SimpleQueue()
    loop = asyncio.get_running_loop()

    def work() -> None:
        while (job := jobs.get()) is not None:
            future, message = job
            loop.call_soon_threadsafe(future.set_result, message)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()

    async def exchange() -> None:
        future: asyncio.Future[bytes] = loop.create_future()
        jobs.put((future, MESSAGE))
        await future

    try:
        return await _timed_async(exchange, rounds)
    finally:
        jobs.put(None)
        thread.join()


def _measure(kind: str, rounds: int) -> list[float]:
    import uvloop

    if kind == "thread":
        return uvloop.run(_thread(rounds))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mawex-hops-") as workdir:
        procs = Processes(Path(workdir))
        server = procs.spawn(f"{kind}-echo", [sys.executable, __file__, "--serve", kind, str(port)])
        try:

            def listening() -> bool:
                if not server.alive():
                    raise RuntimeError(f"the {kind} echo server exited:\n{server.tail()}")
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) == 0

            wait_until(listening, 30, f"{kind} echo server")
            if kind == "http":
                return _http(port, rounds)
            return uvloop.run(_tcp(port, rounds) if kind == "tcp" else _ws(port, rounds))
        finally:
            procs.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--kinds", default=",".join(KINDS), help="of " + ", ".join(KINDS))
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve[0], int(args.serve[1])))
        return 0
    for kind in args.kinds.split(","):
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}")
        samples = _measure(kind, args.rounds)
        p50, p90 = (percentile(samples, q) * 1e6 for q in (0.5, 0.9))
        print(
            f"{kind:6} ping-pong of {len(MESSAGE)} bytes, {len(samples)} rounds: "
            f"p50 {p50:.0f} us, p90 {p90:.0f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
