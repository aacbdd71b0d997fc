"""Workers: one per consumer group, all of a pod's workers in one process and one loop.

A :class:`Worker` keeps a WebSocket session with the leading master
(``WS /v1/worker``, see :mod:`mawex.wire.worker`) and runs what it is assigned
in its :class:`~mawex.sandbox.Sandbox`, one attempt at a time:

- it tries the master URLs in order, follows a ``not_leader`` hint, and backs
  off (exponentially, with jitter) once every URL failed;
- the attempt runs in a task of its own, so heartbeats and ``cancel`` frames
  keep flowing while it runs;
- a ``finished`` frame is kept until its ``ack`` arrives and re-sent after
  every reconnect, so a dropped connection or a lost ack never loses a result
  (the master treats a repeated ``finished`` as a no-op);
- ``hello`` names the attempt still in flight (running, still holding the pod,
  or finished but not yet acked), so a master that took over does not fail it;
- code that outlives its attempt (a timed-out thread) keeps the pod busy:
  ``finished`` carries ``busy=true`` and ``free`` follows when the code returns.

Logs go to the ``mawex.worker`` logger with a stable ``extra={"action": ...}``.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import signal
import ssl
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mawex.addresses import UNIX_PREFIX, UNIX_SCHEME, WS_UNIX_SCHEME, master_url, socket_path
from mawex.errors import ConfigError, Rejected
from mawex.model import Task, check_name
from mawex.sandbox import Outcome, Sandbox, create_sandbox
from mawex.sandbox.waiting import wait_any
from mawex.wire.worker import (
    MAX_ERROR_CHARS,
    PROTOCOL_VERSION,
    Ack,
    Assign,
    AttemptRef,
    Bye,
    Cancel,
    Error,
    Finished,
    Free,
    Heartbeat,
    Hello,
    MasterMessage,
    Welcome,
    WorkerMessage,
    decode_master_frame,
    decode_master_message,
    encode,
)
from mawex.worker.connection import WorkerConnection

__all__ = [
    "Worker",
    "WorkerPool",
    "WorkerState",
    "build_workers",
    "make_worker_id",
    "parse_masters",
    "run_workers",
    "worker_ws_url",
]

log = logging.getLogger("mawex.worker")

WORKER_PATH = "/v1/worker"


class WorkerState(StrEnum):
    """Where a :class:`Worker` is in its life."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    STOPPING = "stopping"
    STOPPED = "stopped"


# -- configuration helpers ------------------------------------------------------


def worker_ws_url(master: str) -> str:
    """``http(s)://host:port[/prefix]`` → ``ws(s)://host:port[/prefix]/v1/worker``.

    ``ws(s)://`` URLs are taken as they are; a bare ``host:port`` means ``http``. A
    master on a Unix socket (``unix:PATH``, ``http+unix://…``) → ``ws+unix://…/v1/worker``.
    """
    text = master.strip()
    if text.startswith((UNIX_PREFIX, f"{UNIX_SCHEME}://")):
        return f"{WS_UNIX_SCHEME}{master_url(text)[len(UNIX_SCHEME) :]}{WORKER_PATH}"
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ConfigError(f"invalid master URL {master!r}: expected http(s)://host:port")
    path = parts.path.rstrip("/")
    if parts.scheme.lower() in ("http", "https") or not path.endswith(WORKER_PATH):
        path = f"{path}{WORKER_PATH}"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def parse_masters(masters: str | Iterable[str]) -> list[str]:
    """Split ``"URL,URL"`` (or a list of such strings) into worker channel URLs, in order."""
    items = [masters] if isinstance(masters, str) else list(masters)
    urls: list[str] = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                url = worker_ws_url(part)
                if url not in urls:
                    urls.append(url)
    if not urls:
        raise ConfigError("at least one master URL is required")
    return urls


def make_worker_id(pod: str, group: str) -> str:
    """A fresh worker id, ``<pod>-<group>-<8 hex>``, shortened to stay a valid name."""
    return f"{f'{pod}-{group}'[:55]}-{uuid.uuid4().hex[:8]}"


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except Rejected as exc:
        raise ConfigError(str(exc)) from None


def _positive(value: float | None, what: str) -> float | None:
    if value is not None and not value > 0:
        raise ConfigError(f"{what} must be a positive number of seconds, not {value!r}")
    return value


def _ssl_context(ca: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use CA bundle {ca!r}: {exc}") from exc


def _is_utf8(data: bytes) -> bool:
    try:
        codecs.utf_8_decode(data, "strict", True)
    except UnicodeDecodeError:
        return False
    return True


def _attempt_text(ref: AttemptRef | Assign | Finished | Free) -> str:
    return f"{ref.group}/{ref.id}#{ref.attempt}"


def _ref(message: Assign | Ack | Cancel | Finished | Free) -> AttemptRef:
    return AttemptRef(group=message.group, id=message.id, attempt=message.attempt)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait for them; cancels again should one swallow a cancellation."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the caller has already dealt with it


class _Running:
    """The attempt being executed and the asyncio task executing it."""

    __slots__ = ("ref", "task")

    def __init__(self, ref: AttemptRef, task: asyncio.Task[None]) -> None:
        self.ref = ref
        self.task = task


# -- the worker -----------------------------------------------------------------


class Worker:
    """One worker of one consumer group in one pod.

    ``await worker.run()`` starts the sandbox, connects, runs what it is assigned
    and returns after :meth:`stop` (having drained or handed back the running
    attempt and closed the sandbox, which the worker owns). ``connected`` is set
    while a master has welcomed the worker.

    ``masters`` are tried in order; ``task_timeout`` caps every attempt's timeout
    (it applies when a task has none or a larger one); on stop, the running
    attempt gets ``drain_timeout`` seconds to end before it is handed back, and a
    finished one ``ack_timeout`` seconds for its ack. A JSON result over
    ``max_result_bytes`` fails its attempt (the master would refuse the frame).
    """

    def __init__(
        self,
        *,
        masters: str | Iterable[str],
        group: str,
        pod: str,
        sandbox: Sandbox,
        worker_id: str | None = None,
        token: str | None = None,
        ca: str | None = None,
        task_timeout: float | None = None,
        drain_timeout: float = 30.0,
        ack_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 3.0,
        max_result_bytes: int = 1 << 20,
        max_frame: int = 64 * 1024 * 1024,
    ) -> None:
        self.group = _name(group, "group")
        self.pod = _name(pod, "pod")
        self.id = _name(worker_id, "worker id") if worker_id else make_worker_id(pod, group)
        self.urls = parse_masters(masters)
        self.sandbox = sandbox
        self.task_timeout = _positive(task_timeout, "task timeout")
        self.drain_timeout = max(0.0, drain_timeout)
        self.ack_timeout = max(0.0, ack_timeout)
        self.connect_timeout = _positive(connect_timeout, "connect timeout") or 10.0
        self.backoff_initial = _positive(backoff_initial, "backoff") or 0.1
        self.backoff_max = max(self.backoff_initial, backoff_max)
        self.max_result_bytes = max_result_bytes
        #: The master's result limit, from its welcome (the smaller one applies).
        self._master_result_limit: int | None = None
        self.max_frame = max_frame
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl = _ssl_context(ca) if ca else None

        self.state = WorkerState.NEW
        #: Set while a master has welcomed this worker.
        self.connected = asyncio.Event()
        #: The URL of the master the worker is (or was last) connected to.
        self.master: str | None = None
        #: The leader epoch of the last welcome.
        self.epoch: int | None = None

        self._stop_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._ended = asyncio.Event()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._send_lock = asyncio.Lock()
        self._ws: ClientConnection | None = None
        self._last_sent = 0.0
        self._index = 0
        self._redirect: str | None = None
        self._steered = False
        self._running: _Running | None = None
        self._handed_back: AttemptRef | None = None
        self._unacked: dict[AttemptRef, Finished] = {}
        self._busy: Finished | None = None
        self._busy_watch: asyncio.Task[None] | None = None
        self._pending_free: list[Free] = []

    def __repr__(self) -> str:
        return f"Worker({self.id!r}, group={self.group!r}, pod={self.pod!r}, {self.state})"

    @property
    def running(self) -> AttemptRef | None:
        """The attempt being executed, if any."""
        return self._running.ref if self._running is not None else None

    def stop(self, *, drain: bool = True) -> None:
        """Ask :meth:`run` to check out; ``drain=False`` hands the running attempt back at once.

        Safe to call from a signal handler, before ``run``, or more than once.
        """
        self._stop_requested.set()
        if not drain:
            self._hurry.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises ExecutorLoadError if the executor cannot load."""
        if self.state is not WorkerState.NEW:
            raise RuntimeError("a Worker runs only once")
        self.state = WorkerState.CONNECTING
        self._log(logging.INFO, "worker starting", "start", masters=self.urls)
        try:
            await self.sandbox.start()
            connection = asyncio.create_task(self._connection_loop(), name=f"{self.id}-conn")
            stop = asyncio.create_task(self._stop_requested.wait())
            try:
                await asyncio.wait({connection, stop}, return_when=asyncio.FIRST_COMPLETED)
                if connection.done():
                    connection.result()  # the loop only ends by failing: raise its error
                await self._drain()
            finally:
                self._ended.set()
                await _cancel(connection, stop)
        finally:
            await self._teardown()

    # -- connection management ----------------------------------------------------

    async def _connection_loop(self) -> None:
        failures = 0
        while not self._ended.is_set():
            url = self._next_url()
            self._steered = False
            self.state = WorkerState.CONNECTING
            welcomed = await self._connect_once(url)
            if self._ended.is_set():
                return
            if welcomed:
                failures = 0
                delay = random.uniform(0, self.backoff_initial)
                if url not in self.urls and not self._steered:
                    self._redirect = url  # a leader we were sent to: try it again first
            else:
                failures += 1
                if not self._steered:
                    self._index += 1
                delay = self._backoff(failures)
            if delay > 0:
                await self._sleep(delay)

    def _backoff(self, failures: int) -> float:
        n = len(self.urls)
        if self._steered and failures < 2 * n:
            return 0.0  # follow a leader hint at once (unless hints keep failing)
        if failures % n:
            return 0.0  # the next URL of this round
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** (failures // n - 1))
        return base / 2 + random.uniform(0, base / 2)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._ended.wait()
        except TimeoutError:
            pass

    def _next_url(self) -> str:
        if self._redirect is not None:
            url, self._redirect = self._redirect, None
            return url
        return self.urls[self._index % len(self.urls)]

    def _follow(self, leader: str | None) -> None:
        """Go to ``leader`` next (a not_leader hint), else to the next URL of the list."""
        self._steered = True
        hint = None
        if leader:
            try:
                hint = worker_ws_url(leader)
            except ConfigError:
                self._log(logging.WARNING, "ignoring a bad leader hint", "bad_hint", hint=leader)
        if hint in self.urls:
            self._index = self.urls.index(hint)
        else:
            self._index += 1
            self._redirect = hint

    async def _connect_once(self, url: str) -> bool:
        """One session with ``url``; True when a master welcomed the worker."""
        self._log(logging.DEBUG, "connecting", "connect", url=url)
        path = socket_path(url)
        unix: dict[str, Any] = {} if path is None else {"unix": True, "path": path}
        try:
            ws = await connect(
                url if path is None else f"ws://localhost{WORKER_PATH}",
                additional_headers=self._headers,
                ssl=self._ssl if url.startswith("wss:") else None,
                open_timeout=self.connect_timeout,
                close_timeout=2,
                ping_interval=10,
                ping_timeout=20,
                max_size=self.max_frame,
                compression=None,
                create_connection=WorkerConnection,
                **unix,
            )
        except InvalidStatus as exc:
            self._rejected_handshake(url, exc)
            return False
        except ssl.SSLCertVerificationError as exc:
            self._log(
                logging.ERROR,
                "the master's TLS certificate is not trusted (give the CA that signed it "
                "with --ca)",
                "tls_refused",
                url=url,
                error=str(exc),
            )
            return False
        except Exception as exc:  # refused, unreachable, TLS, timeout, bad handshake
            self._log(
                logging.INFO, "cannot reach master", "connect_failed", url=url, error=str(exc)
            )
            return False
        try:
            return await self._session(ws, url)
        finally:
            self._ws = None
            self.connected.clear()
            await ws.close()

    def _rejected_handshake(self, url: str, exc: InvalidStatus) -> None:
        status = exc.response.status_code
        try:
            body = msgspec.json.decode(exc.response.body or b"{}")
        except msgspec.DecodeError:
            body = {}
        code = body.get("error") if isinstance(body, dict) else None
        if code == "not_leader":
            self._follow(body.get("leader"))
            self._log(logging.INFO, "master is a standby", "not_leader", url=url)
            return
        level = logging.ERROR if status in (401, 403) else logging.WARNING
        message = "master refused the connection"
        if status == 401:
            message += ": a valid worker token is required (--token)"
        self._log(level, message, "refused", url=url, status=status, error=code)

    async def _session(self, ws: ClientConnection, url: str) -> bool:
        """Check in and serve; True once a master has welcomed the worker."""
        try:
            welcome = await self._check_in(ws, url)
        except ConnectionClosed as exc:
            self._log(
                logging.INFO, "connection lost before welcome", "disconnected", url=url, error=exc
            )
            return False
        if welcome is None or self._ended.is_set():
            return welcome is not None
        self._welcomed(ws, welcome, url)
        heartbeat = asyncio.create_task(self._heartbeat_loop(welcome.heartbeat_s))
        watchdog = asyncio.create_task(self._liveness_loop(ws, welcome.heartbeat_s, url))
        direct = ws if isinstance(ws, WorkerConnection) else None
        try:
            await self._resend()
            if direct is not None:
                direct.on_text = self._read_direct
            async for frame in ws:
                if not await self._dispatch_frame(frame, url):
                    break
        except ConnectionClosed as exc:
            self._log(logging.INFO, "connection lost", "disconnected", url=url, error=str(exc))
        else:
            self._log(logging.INFO, "session ended", "disconnected", url=url)
        finally:
            if direct is not None:
                direct.on_text = None
            await _cancel(heartbeat)
            await _cancel(watchdog)
        return True

    async def _check_in(self, ws: ClientConnection, url: str) -> Welcome | None:
        await ws.send(encode(self._hello()), text=True)
        try:
            async with asyncio.timeout(self.connect_timeout):
                first = await ws.recv()
        except TimeoutError:
            self._log(logging.WARNING, "no welcome from master", "no_welcome", url=url)
            return None
        message = self._decode(first)
        if isinstance(message, Error):
            self._on_error(message, url)
        elif message is not None and not isinstance(message, Welcome):
            self._log(logging.WARNING, "expected a welcome", "bad_frame", url=url)
        return message if isinstance(message, Welcome) else None

    def _hello(self) -> Hello:
        # The attempt the master must not give up on: the one running, else one whose
        # code still runs (the pod is busy), else one whose result is not yet acked.
        running = self.running
        if running is None and self._busy is not None:
            running = _ref(self._busy)
        if running is None and self._unacked:
            running = next(reversed(self._unacked))
        return Hello(
            worker=self.id,
            group=self.group,
            pod=self.pod,
            sandbox=self.sandbox.kind,
            running=running,
            version=PROTOCOL_VERSION,
        )

    def _welcomed(self, ws: ClientConnection, welcome: Welcome, url: str) -> None:
        self._ws = ws
        self.master = url
        self.epoch = welcome.epoch
        self._master_result_limit = welcome.max_result_bytes
        self._last_sent = asyncio.get_running_loop().time()
        stopping = self._stop_requested.is_set()
        self.state = WorkerState.STOPPING if stopping else WorkerState.CONNECTED
        self.connected.set()
        self._log(
            logging.INFO,
            "connected",
            "connected",
            url=url,
            epoch=welcome.epoch,
            master_id=welcome.master_id,
            running=self.running and _attempt_text(self.running),
        )

    async def _resend(self) -> None:
        """After a welcome: re-send unacked results and pending frees."""
        for finished in list(self._unacked.values()):
            self._log(logging.INFO, "re-sending result", "resend", attempt=finished)
            await self._send(finished)
        frees, self._pending_free = self._pending_free, []
        for free in frees:
            if not await self._send(free):
                self._pending_free.append(free)

    async def _heartbeat_loop(self, interval: float) -> None:
        interval = max(interval, 0.05)
        loop = asyncio.get_running_loop()
        while True:
            delay = self._last_sent + interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._send(Heartbeat())
            await asyncio.sleep(interval)

    async def _liveness_loop(self, ws: ClientConnection, interval: float, url: str) -> None:
        """Ping the master; drop a connection to a master that stopped answering.

        A frozen master (paused, partitioned) never closes the socket, and a worker
        that waits for TCP to notice could stay with it longer than the new leader's
        grace period, losing its running attempt to a retry.
        """
        period = max(interval * 2, 0.5)
        deadline = max(interval * 3, 2.0)
        while True:
            await asyncio.sleep(period)
            try:
                pong = await ws.ping()
                await asyncio.wait_for(pong, deadline)
            except TimeoutError:
                self._log(
                    logging.WARNING,
                    "master stopped answering; reconnecting",
                    "master_unresponsive",
                    url=url,
                    silent_s=deadline,
                )
                ws.transport.abort()
                return
            except ConnectionClosed:
                return

    def _read_direct(self, text: bytes) -> bool:
        """Handle a frame the connection read while the session's loop waits for one,
        when it holds only acks and at most one attempt to start (see
        :meth:`_startable`): what the loop would do with it, without waking the loop.
        Anything else is left to the loop; whether it was handled."""
        try:
            messages = decode_master_frame(text)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        assigns = [m for m in messages if isinstance(m, Assign)]
        if len(assigns) > 1 or not all(isinstance(m, Assign | Ack) for m in messages):
            return False
        # acks change only which results are unacked: an attempt still unacked is not
        # startable, so checking before the acks is checking after them
        if assigns and not self._startable(assigns[0]):
            return False
        for message in messages:
            if isinstance(message, Assign):
                self._start(message)
            else:
                assert isinstance(message, Ack)
                self._on_ack(message)
        return True

    async def _dispatch_frame(self, frame: str | bytes, url: str) -> bool:
        """Handle every message of one frame, in order; False ends the session."""
        try:
            messages = decode_master_frame(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log(logging.WARNING, "ignoring an invalid frame", "bad_frame", error=str(exc))
            return True
        for message in messages:
            if not await self._dispatch(message, url):
                return False
        return True

    def _decode(self, frame: str | bytes) -> MasterMessage | None:
        try:
            return decode_master_message(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._log(logging.WARNING, "ignoring an invalid frame", "bad_frame", error=str(exc))
            return None

    async def _send(self, message: WorkerMessage) -> bool:
        """Send on the current session; False when there is none (the caller keeps the frame)."""
        ws = self._ws
        if ws is None:
            return False
        frame = encode(message)
        if not (
            isinstance(ws, WorkerConnection)
            and not self._send_lock.locked()  # a send() under way goes first
            and ws.write_text(frame)
        ):
            try:
                async with self._send_lock:
                    await ws.send(frame, text=True)
            except ConnectionClosed:
                return False
        self._last_sent = asyncio.get_running_loop().time()
        return True

    # -- master -> worker -----------------------------------------------------------

    async def _dispatch(self, message: MasterMessage, url: str) -> bool:
        """Handle one frame; False ends the session."""
        if isinstance(message, Assign):
            return await self._on_assign(message)
        if isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Cancel):
            await self._on_cancel(message)
        elif isinstance(message, Error):
            self._on_error(message, url)
            return False
        else:
            self._log(logging.DEBUG, "ignoring a repeated welcome", "bad_frame")
        return True

    async def _on_assign(self, assign: Assign) -> bool:
        if self._startable(assign):
            self._start(assign)
            return True
        ref = _ref(assign)
        if self._stop_requested.is_set():
            self._log(logging.INFO, "handing back", "handback", attempt=ref)
            await self._checkout(ref)
            return False
        known = self._unacked.get(ref) or (
            self._busy if self._busy and _ref(self._busy) == ref else None
        )
        if known is not None:
            await self._send(known)  # the master missed our result: repeat it
            return True
        if self._running is not None and self._running.ref == ref:
            return True  # a repeated assign of what we are running
        if assign.group != self.group:
            refusal = f"worker {self.id} serves group {self.group}, not {assign.group}"
        else:
            assert self._running is not None  # else it would be startable
            refusal = f"worker {self.id} is busy with {_attempt_text(self._running.ref)}"
        self._log(logging.WARNING, "refusing an assignment", "refuse", attempt=ref)
        await self._report(ref, Outcome.failure(refusal))
        return True

    def _startable(self, assign: Assign) -> bool:
        """Whether ``assign`` is a new attempt of this worker's group it starts at once:
        nothing running, no stop requested, no result of that attempt still held."""
        ref = _ref(assign)
        return (
            not self._stop_requested.is_set()
            and self._running is None
            and assign.group == self.group
            and ref not in self._unacked
            and not (self._busy is not None and _ref(self._busy) == ref)
        )

    def _start(self, assign: Assign) -> None:
        ref = _ref(assign)
        task = asyncio.create_task(self._execute(assign, ref), name=f"{self.id}-attempt")
        self._running = _Running(ref, task)

    def _on_ack(self, ack: Ack) -> None:
        ref = _ref(ack)
        if self._unacked.pop(ref, None) is not None:
            self._log(logging.DEBUG, "result acknowledged", "ack", attempt=ref)
        if not self._unacked:
            self._all_acked.set()

    async def _on_cancel(self, cancel: Cancel) -> None:
        ref = _ref(cancel)
        if self._running is None or self._running.ref != ref:
            self._log(logging.DEBUG, "cancel of an attempt not running", "cancel_ignored")
            return
        self._log(logging.INFO, "cancelling", "cancel", attempt=ref, reason=cancel.reason)
        await self.sandbox.cancel(cancel.reason)

    def _on_error(self, error: Error, url: str) -> None:
        if error.error == "not_leader":
            self._follow(error.leader)
            self._log(
                logging.INFO, "master is a standby", "not_leader", url=url, leader=error.leader
            )
        else:
            level = logging.ERROR if error.error == "unauthorized" else logging.WARNING
            self._log(
                level,
                "master ended the session",
                "error",
                url=url,
                error=error.error,
                detail=error.detail,
            )

    # -- running attempts -------------------------------------------------------------

    def _timeout(self, task_timeout: float | None) -> float | None:
        limits = [t for t in (task_timeout, self.task_timeout) if t is not None]
        return min(limits) if limits else None

    async def _execute(self, assign: Assign, ref: AttemptRef) -> None:
        timeout = self._timeout(assign.timeout_s)
        self._log(logging.DEBUG, "running", "run", attempt=ref, timeout=timeout)
        try:
            payload = msgspec.json.decode(assign.payload)
        except msgspec.DecodeError as exc:
            outcome = Outcome.failure(f"invalid payload: {exc}")
        else:
            task = Task(id=assign.id, group=assign.group, payload=payload, attempt=assign.attempt)
            try:
                outcome = await self.sandbox.run(task, timeout)
            except Exception as exc:  # a sandbox bug must not take the worker down
                outcome = Outcome.failure(f"sandbox error: {type(exc).__name__}: {exc}")
                log.exception(
                    "sandbox failed", extra={"action": "sandbox_error", "worker": self.id}
                )
        limit = min(self.max_result_bytes, self._master_result_limit or self.max_result_bytes)
        if outcome.ok and len(outcome.result) > limit:
            outcome = Outcome.failure(
                f"result of {len(outcome.result)} bytes is over the limit of {limit} bytes"
            )
        if outcome.ok and not _is_utf8(outcome.result):
            outcome = Outcome.failure("result is not valid JSON text (not UTF-8)")
        if outcome.error is not None and len(outcome.error) > MAX_ERROR_CHARS:
            cut = outcome.error[: MAX_ERROR_CHARS - 40]
            outcome = Outcome.failure(
                f"{cut}... ({len(outcome.error)} characters, cut)", outcome.lingering
            )
        self._running = None
        if ref == self._handed_back:
            self._log(
                logging.INFO,
                "handed-back attempt ended",
                "handback_done",
                attempt=ref,
            )
            return
        await self._report(ref, outcome)

    async def _report(self, ref: AttemptRef, outcome: Outcome) -> None:
        finished = Finished(
            group=ref.group,
            id=ref.id,
            attempt=ref.attempt,
            ok=outcome.ok,
            result=msgspec.Raw(outcome.result) if outcome.ok else msgspec.Raw(b"null"),
            error=outcome.error,
            busy=outcome.lingering is not None,
        )
        self._unacked[ref] = finished
        self._all_acked.clear()
        if outcome.lingering is not None:
            self._busy = finished
            self._busy_watch = asyncio.create_task(
                self._watch_lingering(finished, outcome.lingering)
            )
        # per-task lines cost more than the task itself for small tasks: debug level
        self._log(
            logging.DEBUG if outcome.ok else logging.WARNING,
            "attempt finished",
            "finished",
            attempt=ref,
            ok=outcome.ok,
            error=outcome.error and outcome.error.splitlines()[0],
            busy=finished.busy,
        )
        await self._send(finished)

    async def _watch_lingering(self, finished: Finished, lingering: Awaitable[None]) -> None:
        try:
            await lingering
        except Exception:
            log.exception("lingering code failed", extra={"action": "free", "worker": self.id})
        self._busy = None
        free = Free(group=finished.group, id=finished.id, attempt=finished.attempt)
        self._log(logging.INFO, "abandoned code returned: pod free", "free", attempt=free)
        if not await self._send(free):
            self._pending_free.append(free)

    # -- stopping ---------------------------------------------------------------------

    async def _drain(self) -> None:
        """Let the running attempt end (up to ``drain_timeout``), then check out."""
        self.state = WorkerState.STOPPING
        self._log(
            logging.INFO,
            "stopping",
            "stopping",
            running=self.running and _attempt_text(self.running),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        running = self._running
        if running is not None:
            await self._wait_any(running.task, deadline)
            if not running.task.done():
                await self._hand_back(running)
                return
        if self._busy_watch is not None:
            await self._wait_any(self._busy_watch, deadline)
        if self._unacked:
            acked = asyncio.ensure_future(self._all_acked.wait())
            try:
                await self._wait_any(acked, loop.time() + self.ack_timeout)
            finally:
                acked.cancel()
        await self._checkout(None)

    async def _wait_any(self, work: asyncio.Future[Any], deadline: float) -> None:
        """Wait for ``work`` until ``deadline``, a hurried stop, or the end of the session."""
        hurry = asyncio.ensure_future(self._hurry.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await wait_any(work, hurry, ended, timeout=timeout)
        finally:
            hurry.cancel()
            ended.cancel()

    async def _hand_back(self, running: _Running) -> None:
        self._handed_back = running.ref
        self._log(
            logging.WARNING,
            "drain timeout: handing back",
            "handback",
            attempt=running.ref,
        )
        await self._checkout(running.ref)
        await self.sandbox.cancel("worker stopping")
        await asyncio.wait({running.task}, timeout=5.0)

    async def _checkout(self, handback: AttemptRef | None) -> None:
        """Send ``bye`` (if connected) and end the worker's sessions."""
        if self._ended.is_set():
            return
        sent = await self._send(Bye(handback=handback))
        self._ended.set()
        self._log(
            logging.INFO,
            "checked out",
            "bye",
            sent=sent,
            handback=handback and _attempt_text(handback),
        )
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def _teardown(self) -> None:
        running = self._running
        if running is not None:
            self._handed_back = running.ref
            await self.sandbox.cancel("worker stopped")
            await _cancel(running.task)
        if self._busy_watch is not None:
            await _cancel(self._busy_watch)
        try:
            await self.sandbox.close()
        finally:
            self.connected.clear()
            self.state = WorkerState.STOPPED
            self._log(logging.INFO, "worker stopped", "stopped")

    def _log(
        self,
        level: int,
        message: str,
        action: str,
        *,
        attempt: AttemptRef | Assign | Finished | Free | None = None,
        **fields: Any,
    ) -> None:
        """Log ``message`` with the worker's fields; ``attempt`` is named in the line,
        which is built only when ``level`` is kept (per-task lines are debug lines)."""
        if log.isEnabledFor(level):
            if attempt is not None:
                fields["attempt"] = _attempt_text(attempt)
            log.log(level, message, extra={"action": action, "worker": self.id, **fields})


# -- several workers in one pod ---------------------------------------------------


class WorkerPool:
    """Runs several workers (one per group and pod) on one loop."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        if not workers:
            raise ConfigError("a worker pool needs at least one worker")
        self.workers = list(workers)

    def stop(self, *, drain: bool = True) -> None:
        """Stop every worker (see :meth:`Worker.stop`)."""
        for worker in self.workers:
            worker.stop(drain=drain)

    async def wait_connected(self) -> None:
        """Wait until every worker has been welcomed by a master."""
        await asyncio.gather(*(worker.connected.wait() for worker in self.workers))

    async def run(self) -> None:
        """Run all workers until :meth:`stop`; if one fails, stop the others and raise its error."""
        tasks = [asyncio.create_task(worker.run(), name=worker.id) for worker in self.workers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [task for task in done if not task.cancelled() and task.exception()]
            if failed:
                self.stop(drain=False)
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in failed:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            await _cancel(*tasks)


def _groups(groups: str | Iterable[str]) -> list[str]:
    items = [groups] if isinstance(groups, str) else list(groups)
    names: list[str] = []
    for item in items:
        for part in item.split(","):
            name = part.strip()
            if name and name not in names:
                names.append(_name(name, "group"))
    if not names:
        raise ConfigError("at least one group is required")
    return names


def build_workers(
    executor_ref: str,
    *,
    masters: str | Iterable[str],
    groups: str | Iterable[str],
    pod: str,
    sandbox: str = "local",
    args: Mapping[str, str] | None = None,
    sandbox_options: Mapping[str, Any] | None = None,
    concurrency: int = 1,
    **worker_options: Any,
) -> WorkerPool:
    """One :class:`Worker` per group (``"a,b"`` or a list) and pod, each with its own sandbox.

    ``concurrency`` > 1 runs that many pods in this process, ``POD-1`` … ``POD-N``,
    each serving every group and running one task at a time. ``worker_options`` are
    :class:`Worker` keyword arguments (``token``, ``ca``, ``task_timeout``, ...).
    """
    names = _groups(groups)
    workers = []
    for pod_name in pod_names(pod, concurrency):
        options = dict(sandbox_options or {})
        if "pod" in options:  # a sandbox that labels what it starts with its pod (k8s)
            options["pod"] = pod_name
        for group in names:
            workers.append(
                Worker(
                    masters=masters,
                    group=group,
                    pod=pod_name,
                    sandbox=create_sandbox(sandbox, executor_ref, args, **options),
                    **worker_options,
                )
            )
    return WorkerPool(workers)


def pod_names(pod: str, concurrency: int = 1) -> list[str]:
    """The pods a worker process with ``concurrency`` runs: ``[pod]``, or ``POD-1`` … ``POD-N``."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    if concurrency == 1:
        return [_name(pod, "pod")]
    return [_name(f"{pod}-{index}", "pod") for index in range(1, concurrency + 1)]


async def run_workers(
    executor_ref: str,
    *,
    masters: str | Iterable[str],
    groups: str | Iterable[str],
    pod: str,
    sandbox: str = "local",
    args: Mapping[str, str] | None = None,
    sandbox_options: Mapping[str, Any] | None = None,
    concurrency: int = 1,
    handle_signals: bool = True,
    **worker_options: Any,
) -> None:
    """Run one worker per group in pod ``pod`` (``concurrency`` pods: see
    :func:`build_workers`) until SIGTERM/SIGINT (``mawex worker``).

    The first signal drains (running attempts get ``drain_timeout``), a second one
    hands running attempts back at once.
    """
    pool = build_workers(
        executor_ref,
        masters=masters,
        groups=groups,
        pod=pod,
        sandbox=sandbox,
        args=args,
        sandbox_options=sandbox_options,
        concurrency=concurrency,
        **worker_options,
    )
    loop = asyncio.get_running_loop()
    installed: dict[signal.Signals, Any] = {}  # signal -> the handler it had before
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        log.info("signal received: stopping", extra={"action": "signal", "count": signals})
        pool.stop(drain=signals == 1)

    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or a platform without signal support
            installed[sig] = previous
    try:
        await pool.run()
    finally:
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)  # e.g. asyncio.run()'s own SIGINT handler
