"""Timestamps at the steps of a round trip, for ``bench/roundtrip.py --timeline``.

Imported at start-up by every Python process that has this directory on its
``PYTHONPATH`` while ``MAWEX_BENCH_TIMELINE`` names a directory: it wraps the
functions below so that each call records ``(step, CLOCK_MONOTONIC ns)``, and at
exit writes them to ``<pid>.tl`` there. The clock is the machine's, so the steps
of the client, the master and the worker line up. Each mark costs about a
microsecond; the wrapped functions are otherwise unchanged.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import time
from typing import Any

_DIR = os.environ.get("MAWEX_BENCH_TIMELINE", "")
_marks: list[tuple[str, int]] = []
_now = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: one clock for every process

_HTTP = "uvicorn.protocols.http.httptools_impl"
_WS = "uvicorn.protocols.websockets.websockets_sansio_impl"

#: ("module:Class.function" or "module:function", step at the call, step at the return)
#: ("" for no step)
PROBES = (
    ("mawex.client.sync:Client.run", "client.request", "client.reply"),
    ("mawex.client.async_:AsyncClient.run", "client.request", "client.reply"),
    ("mawex.client._http:_BlockingConnection.roundtrip", "client.send", "client.received"),
    ("mawex.client._http:_Connection.roundtrip", "client.send", "client.received"),
    (f"{_HTTP}:HttpToolsProtocol.data_received", "master.http_read", ""),
    ("mawex.server.tasks:TaskEndpoints._submit", "master.submit_handler", ""),
    # a client's per-task requests, answered by the master's HTTP protocol itself
    ("mawex.server.http_protocol:GuardedHttpToolsProtocol._answer", "master.direct_request", ""),
    ("mawex.master.engine:Engine._turn", "master.turn", "master.turn_done"),
    ("mawex.journal.sqlite:SQLiteJournal.append", "master.append", "master.append_done"),
    ("mawex.journal.postgresql:PostgreSQLJournal.append", "master.append", "master.append_done"),
    ("mawex.server.ws_protocol:LeanWebSocketsProtocol.data_received", "master.ws_read", ""),
    # a worker's frames through ASGI, and (since 967ee2a) directly: one or the other
    (f"{_WS}:WebSocketsSansIOProtocol.send", "master.ws_write", "master.ws_written"),
    (
        "mawex.server.ws_protocol:LeanWebSocketsProtocol.write_texts",
        "master.ws_write",
        "master.ws_written",
    ),
    ("starlette.websockets:WebSocket.receive", "", "master.ws_message"),
    ("mawex.server.worker_ws:_CheckedIn.read_direct", "master.ws_message", ""),
    (f"{_HTTP}:RequestResponseCycle.send", "master.http_write", "master.http_written"),
    (
        "mawex.server.http_protocol:GuardedHttpToolsProtocol._respond",
        "master.http_write",
        "master.http_written",
    ),
    ("mawex.worker.connection:WorkerConnection.data_received", "worker.ws_read", ""),
    ("mawex.worker.runner:Worker._dispatch_frame", "worker.frame", ""),
    ("mawex.worker.runner:Worker._read_direct", "worker.frame", ""),
    ("mawex.worker.runner:Worker._execute", "worker.execute", ""),
    ("mawex.sandbox.local:_ExecutorThread.submit", "worker.to_thread", ""),
    ("mawex.sandbox.local:_settle", "worker.executor_done", ""),
    ("mawex.worker.runner:Worker._send", "worker.send", "worker.sent"),
)


def _wrap(owner: Any, name: str, before: str, after: str) -> None:
    fn = getattr(owner, name)
    mark = _marks.append
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            if before:
                mark((before, _now()))
            try:
                return await fn(*args, **kwargs)
            finally:
                if after:
                    mark((after, _now()))

        setattr(owner, name, timed_async)
    else:

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if before:
                mark((before, _now()))
            try:
                return fn(*args, **kwargs)
            finally:
                if after:
                    mark((after, _now()))

        setattr(owner, name, timed)


def _install() -> None:
    import importlib

    for where, before, after in PROBES:
        module_name, _, path = where.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *classes, function = path.split(".")
        for name in classes:
            owner = getattr(owner, name, None)
        # an older checkout (``roundtrip.py --src``) may lack it
        if owner is not None and hasattr(owner, function):
            _wrap(owner, function, before, after)


def write() -> None:
    """Write the marks so far (once: later calls, at exit too, do nothing)."""
    atexit.unregister(write)
    if not os.path.isdir(_DIR):  # the run failed and its directory is gone
        return
    with open(os.path.join(_DIR, f"{os.getpid()}.tl"), "w") as out:
        out.writelines(f"{step} {ns}\n" for step, ns in _marks)
    _marks.clear()


if _DIR:
    _install()
    atexit.register(write)
