"""``LocalMaster``: a complete master inside the caller's asyncio program."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import uvicorn

from mawex.addresses import (
    ListenAddress,
    UnixListener,
    cannot_listen,
    master_url,
    parse_listen,
)
from mawex.busy_poll import check_window
from mawex.core.decide import Limits
from mawex.errors import ConfigError
from mawex.journal import open_journal
from mawex.journal.base import Journal
from mawex.master.engine import Engine, EngineSettings
from mawex.server.app import create_app
from mawex.server.http_protocol import guarded_http_protocol
from mawex.server.limits import NetLimits
from mawex.server.ws_protocol import LeanWebSocketsProtocol
from mawex.wire.api import ApiLimits

if TYPE_CHECKING:
    from mawex.client.async_ import AsyncClient


#: Connections a listening socket queues before the server accepts them.
BACKLOG = 2048


class LocalMaster:
    """A master (leader or standby) serving HTTP in the current event loop.

    ``journal`` is a journal URL (``sqlite:///./mawex.db``, ``postgresql://…``,
    ``redis://…``) or a :class:`~mawex.journal.base.Journal`; ``listen`` is
    ``HOST:PORT`` (port 0 picks a free port: see :attr:`url`), ``unix:PATH`` (a Unix
    socket, for clients and workers on this machine) or several, comma-separated
    (:mod:`mawex.addresses`). ``token`` is required of clients
    and ``worker_token`` (if given) of workers; ``tls_cert``/``tls_key`` serve
    HTTPS and WSS; ``api_limits`` and ``net_limits`` bound what clients may send.
    ``gc_freeze`` pauses and then freezes Python's cycle collector for the process
    while the state is rebuilt at start (see :class:`~mawex.master.engine.EngineSettings`):
    for a program that runs nothing but the master. ``busy_poll`` keeps the event loop
    polling that many seconds after each change of state instead of sleeping (lower
    latency for sparse traffic, at up to one core of CPU; 0 is off)::

        async with LocalMaster("sqlite:///./jobs.db") as master:
            async with master.client() as client:
                await client.submit("etl", {"day": "2026-11-27"})
    """

    def __init__(
        self,
        journal: str | Journal = "sqlite:///./mawex.db",
        *,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
        master_id: str = "default",
        lease_ttl: float = 5.0,
        token: str | None = None,
        worker_token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        limits: Limits | None = None,
        api_limits: ApiLimits | None = None,
        net_limits: NetLimits | None = None,
        snapshot_every: int = 50_000,
        retain_topic_events: int = 1_000_000,
        wait_leader: bool = True,
        gc_freeze: bool = False,
        busy_poll: float = 0.0,
    ) -> None:
        self._journal_spec = journal
        #: Where it listens (with the ports picked once started).
        self.addresses = parse_listen(listen)
        if tls_cert and any(address.is_unix for address in self.addresses):
            raise ConfigError(
                "TLS serves TCP addresses only: listen on unix:PATH without --tls-cert "
                "(the socket file's permissions guard it) or on HOST:PORT with it"
            )
        self._advertise = master_url(advertise) if advertise else None
        self.master_id = master_id
        self.lease_ttl = lease_ttl
        if token and worker_token and token == worker_token:
            raise ConfigError("the worker token must differ from the client token")
        self.token = token
        self.worker_token = worker_token
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.limits = limits or Limits()
        self.api_limits = api_limits or ApiLimits()
        self.net_limits = net_limits or NetLimits()
        self.snapshot_every = snapshot_every
        self.retain_topic_events = retain_topic_events
        self._wait_leader = wait_leader
        self.gc_freeze = gc_freeze
        try:
            self.busy_poll = check_window(busy_poll)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._engine: Engine | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._tcp_sockets: list[socket.socket] = []
        self._unix_listeners: list[UnixListener] = []

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("LocalMaster is not started")
        return self._engine

    @property
    def host(self) -> str | None:
        """The host of the first TCP address it listens on (None without one)."""
        tcp = self._first_tcp()
        return None if tcp is None else tcp.host

    @property
    def port(self) -> int | None:
        """The port of the first TCP address (the one picked, once started, for port 0)."""
        tcp = self._first_tcp()
        return None if tcp is None else tcp.port

    def _first_tcp(self) -> ListenAddress | None:
        return next((a for a in self.addresses if not a.is_unix), None)

    @property
    def url(self) -> str:
        """The URL clients and workers use to reach this master."""
        return self._advertise or self.addresses[0].url(tls=bool(self.tls_cert))

    async def start(self) -> None:
        """Bind, open the journal, start the engine and serve; waits for leadership if asked."""
        try:
            self._bind()
        except BaseException:
            self._close_sockets()
            raise
        journal = (
            open_journal(self._journal_spec, namespace=self.master_id)
            if isinstance(self._journal_spec, str)
            else self._journal_spec
        )
        settings = EngineSettings(
            master_id=self.master_id,
            advertise=self.url,
            lease_ttl=self.lease_ttl,
            limits=self.limits,
            snapshot_every=self.snapshot_every,
            retain_topic_events=self.retain_topic_events,
            max_result_bytes=self.api_limits.max_result_bytes,
            gc_freeze=self.gc_freeze,
            busy_poll_s=self.busy_poll,
        )
        self._engine = Engine(journal, settings)
        await self._engine.start()
        app = create_app(
            self._engine,
            token=self.token,
            worker_token=self.worker_token,
            api_limits=self.api_limits,
            net_limits=self.net_limits,
        )
        net = self.net_limits
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            # nothing reads the client's address: no X-Forwarded-For rewriting per request
            proxy_headers=False,
            server_header=False,
            http=guarded_http_protocol(net, app.direct),
            ws=LeanWebSocketsProtocol,
            limit_concurrency=net.max_connections,
            timeout_keep_alive=net.keep_alive_timeout,
            h11_max_incomplete_event_size=net.max_header_bytes,
            ws_max_size=self.api_limits.max_frame_bytes,
            ws_per_message_deflate=False,
            ws_ping_interval=20.0,
            timeout_graceful_shutdown=2,
            ssl_certfile=self.tls_cert,
            ssl_keyfile=self.tls_key,
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
        )
        server = _QuietServer(config)
        self._server = server
        sockets = [*self._tcp_sockets, *(listener.socket for listener in self._unix_listeners)]
        self._serve_task = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started:
            if self._serve_task.done():
                await self._serve_task
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        if self._wait_leader:
            await self._engine.wait_leader(self.lease_ttl * 3 + 5)

    async def serve_forever(self) -> None:
        """Run until the HTTP server stops (e.g. SIGTERM, see :meth:`request_stop`)."""
        if self._serve_task is not None:
            await asyncio.shield(self._serve_task)

    def request_stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    async def stop(self) -> None:
        """Hand the lease over, close every connection and the journal."""
        if self._engine is not None:
            await self._engine.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._serve_task, 5)
        self._close_sockets()

    def _bind(self) -> None:
        for i, address in enumerate(self.addresses):
            if address.path is not None:
                self._unix_listeners.append(UnixListener(address.path, BACKLOG))
                continue
            sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
            self._tcp_sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address.host, address.port))
            except OSError as exc:
                raise cannot_listen(str(address), exc.errno, exc.strerror) from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
            self.addresses[i] = dataclasses.replace(address, port=sock.getsockname()[1])

    def _close_sockets(self) -> None:
        for listener in self._unix_listeners:
            listener.close()
        for sock in self._tcp_sockets:
            sock.close()
        self._unix_listeners.clear()
        self._tcp_sockets.clear()

    def __repr__(self) -> str:
        return f"LocalMaster({self.url!r}, master_id={self.master_id!r})"

    def client(self, **options: Any) -> AsyncClient:
        """An :class:`~mawex.AsyncClient` for this master."""
        from mawex.client.async_ import AsyncClient

        return AsyncClient([self.url], token=self.token, **options)

    async def __aenter__(self) -> LocalMaster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class _QuietServer(uvicorn.Server):
    """Signals are the embedding program's business, not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
