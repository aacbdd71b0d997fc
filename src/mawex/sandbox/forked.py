"""The ``forked`` sandbox: every attempt runs in an OS process of its own.

Whatever the task's code does — raise, ``os._exit``, segfault, get SIGKILLed, loop
forever, allocate without bound — the worker survives it and the attempt fails with
a clear error: the exit code or signal, the traceback when there is one, and the tail
of the process's output (its stdout and stderr, at most ``output_limit`` bytes).

How it runs
-----------
:meth:`ForkedSandbox.start` starts a **zygote** (``mawex executor --zygote FD ...``,
started lean with ``python -c``, see :mod:`mawex.sandbox.child`): a helper process
with a control socket to the worker. The zygote forks children ahead of time and
lends the worker one at a time (a *spare*, with a socket to reach it). Per attempt the
worker registers a one-time secret with its
:class:`~mawex.sandbox.connect_back.ConnectBackServer`, makes a socket pair (the
connect-back channel: ``fd://`` URLs, no network, no handshake) and a pipe for the
child's output, and hands the spare one ``run`` request with both — or, when it has
no spare, asks the zygote, which forks one on the spot. Then the zygote forks the
next spare while the task runs, so no task waits for a fork:

- **warm** mode: the zygote imported the executor and built it (with the ``--arg``
  values) once, at start; the child runs the task with it and exits. This is the
  default where it is safe, i.e. on Linux when loading the executor left the zygote
  single-threaded (forking a process with threads can deadlock the child; ``auto``
  then falls back to spawn mode).
- **spawn** mode: the child executes a fresh interpreter running ``mawex executor
  --connect URL`` (:data:`~mawex.sandbox.child.EXECUTOR_BOOT`), which loads the
  executor itself: tens to hundreds of milliseconds per task, for executors that
  cannot be forked or must start from a clean interpreter.

Either way the child registers, receives the ``task`` frame, runs it and reports the
``result`` (the protocol of :mod:`mawex.wire.executor`, as in the ``k8s`` sandbox;
``channel="ws"`` makes the children connect back over the WebSocket server instead).
It leads a session of its own, so its whole process group — grandchildren included —
is killed with ``SIGKILL`` when the attempt times out, is cancelled, or when the
sandbox closes, and whatever the task left running is killed when the attempt ends.
An attempt is over once its process has exited (seen through a pidfd), so the pod's
next task never runs beside it; the zygote reports every child's wait status.

Limits and environment
----------------------
- ``memory_mb``: the child's address space (RLIMIT_AS, virtual memory, the
  interpreter's own included) is capped just before the executor's code runs; an
  allocation past it fails (MemoryError) and the attempt fails with
  ``memory limit of N MB exceeded``.
- The environment is scrubbed: only PATH, HOME, LANG, PYTHONPATH and VIRTUAL_ENV
  remain, plus the names in ``env`` (``NAME`` passes the worker's value, ``NAME=VALUE``
  sets one) and ``MAWEX_MOUNT_PATH``.
- ``mount_path``: a directory of files (the original's config-map mount), exposed as
  ``MAWEX_MOUNT_PATH`` and made the task's working directory. The executor is imported
  from the worker's working directory, before the change.

No orphans: a child dies with its zygote (PR_SET_PDEATHSIG), the zygote kills every
child's process group when the worker closes its control socket or dies, and
:meth:`ForkedSandbox.close` waits for the zygote to exit (killing it if need be).
The zygote dying is noticed at once: the running attempt fails saying so and the next
attempt starts a new zygote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Literal

import msgspec

from mawex.errors import ConfigError, ExecutorLoadError
from mawex.model import Task
from mawex.sandbox.base import Outcome
from mawex.sandbox.child import (
    CONTROL_MAX,
    ZYGOTE_BOOT,
    Exited,
    Failed,
    Ready,
    RunRequest,
    Spare,
    Started,
    Want,
    ZygoteMessage,
    decode_zygote_message,
    encode_control,
)
from mawex.sandbox.connect_back import ChildLost, ConnectBackServer, Expectation, task_frame
from mawex.sandbox.executor_ref import ERROR_LIMIT
from mawex.sandbox.waiting import wait_any

__all__ = ["KEPT_ENV", "MODES", "ForkedSandbox", "child_environment", "describe_status"]

log = logging.getLogger("mawex.sandbox")

Mode = Literal["auto", "warm", "spawn"]
#: The ``mode`` values a forked sandbox accepts.
MODES: tuple[Mode, ...] = ("auto", "warm", "spawn")
#: Environment variables the child keeps without being asked.
KEPT_ENV = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")

_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory")


class _ZygoteGone(Exception):
    """The zygote process is dead (or its control socket is)."""


def child_environment(
    env: Iterable[str] = (), mount_path: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of the sandbox's processes: :data:`KEPT_ENV`, then ``env``, scrubbed.

    Each item of ``env`` is ``NAME`` (the value in ``base``, default ``os.environ``,
    if set there) or ``NAME=VALUE``. ``mount_path`` sets ``MAWEX_MOUNT_PATH``.
    """
    source = os.environ if base is None else base
    result = {name: source[name] for name in KEPT_ENV if name in source}
    for item in env:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not name or "\0" in item:
            raise ConfigError(f"invalid --sandbox-env {item!r}: expected NAME or NAME=VALUE")
        if sep:
            result[name] = value
        elif name in source:
            result[name] = source[name]
    if mount_path is not None:
        result["MAWEX_MOUNT_PATH"] = mount_path
    return result


def describe_status(status: int) -> str:
    """A wait status in words: ``exited with code 3``, ``killed by SIGSEGV (...)``."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with code {code}"
    number = -code
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    description = signal.strsignal(number)
    return f"killed by {name}" + (f" ({description})" if description else "")


def _kill_group(pid: int, *, leader_alive: bool = True) -> None:
    """SIGKILL the process group led by ``pid`` (and ``pid``, should it not lead one yet)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if leader_alive:  # between fork and setsid the child is still in the zygote's group
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _settle(
    future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _Output:
    """Reads a child's output pipe, keeping only the last ``limit`` bytes."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = max(0, limit)
        self.total = 0
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self.eof: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._read)
        self._open = True

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._stop()
            return
        self.total += len(data)
        self._buffer += data
        if len(self._buffer) > 2 * self.limit:
            del self._buffer[: len(self._buffer) - self.limit]

    def _stop(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
        _settle(self.eof)

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the writers to be gone, then stop reading."""
        if self._open:
            await asyncio.wait({self.eof}, timeout=timeout)
            if self._open:  # a stray process still holds the pipe: read what is there
                self._read()
        self._stop()

    def close(self) -> None:
        self._stop()

    def tail(self) -> str:
        """The last ``limit`` bytes as text, starting at a line when cut."""
        data = bytes(self._buffer[-self.limit :]) if self.limit else b""
        text = data.decode(errors="replace")
        if self.total > len(data):
            newline = text.find("\n")
            if 0 <= newline < len(text) - 1:
                text = text[newline + 1 :]
            text = f"[... {self.total - len(data)} earlier bytes]\n{text}"
        return text.rstrip()


class _Zygote:
    """The worker's handle on a zygote process and its control socket."""

    def __init__(self, popen: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.control = control
        self.warm = False
        self._loop = asyncio.get_running_loop()
        self._n = 0
        self._ready: asyncio.Future[Ready] = self._loop.create_future()
        self._starts: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._ends: dict[int, tuple[asyncio.Future[None], int | None]] = {}
        #: A child the zygote lent us, waiting for one run request on its socket.
        self._spare: tuple[int, socket.socket] | None = None
        #: Completes when the control socket closes: the zygote is dead or dying.
        self.died: asyncio.Future[None] = self._loop.create_future()
        #: The zygote's exit code (Popen's convention: negative for a signal).
        self.exited: asyncio.Future[int] = self._loop.create_future()
        control.setblocking(False)
        self._loop.add_reader(control.fileno(), self._readable)
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: poll instead
            self._poller = asyncio.ensure_future(self._poll_exit())
        else:
            self._loop.add_reader(self._pidfd, self._check_exit)

    def _check_exit(self) -> None:
        code = self.popen.poll()
        if code is None:
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        _settle(self.exited, code)

    async def _poll_exit(self) -> None:
        while not self.exited.done():  # no exit notification without a pidfd
            self._check_exit()
            await asyncio.sleep(0.02)

    @property
    def alive(self) -> bool:
        return not self.died.done()

    # -- messages from the zygote -----------------------------------------------------

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, CONTROL_MAX, 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._gone()
                return
            if fds:
                self._on_spare(data, fds)
                continue
            try:
                message = decode_zygote_message(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning(
                    "invalid message from the zygote",
                    extra={"action": "zygote_bad_message", "error": str(exc)},
                )
                continue
            self._on_message(message)

    def _on_spare(self, data: bytes, fds: list[int]) -> None:
        for fd in fds[1:]:
            os.close(fd)
        try:
            message = decode_zygote_message(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            message = None
        if not isinstance(message, Spare):
            os.close(fds[0])
            return
        self._drop_spare()
        link = socket.socket(fileno=fds[0])
        link.setblocking(False)
        self._spare = (message.pid, link)

    def _drop_spare(self) -> None:
        if self._spare is not None:
            self._spare[1].close()  # the spare sees EOF and exits
            self._spare = None

    def want_spare(self) -> None:
        """Ask the zygote to lend us a spare child for the next task."""
        if self.alive:
            try:
                self.control.send(encode_control(Want()))
            except OSError:  # full (never, for so few bytes) or gone: requests still work
                pass

    def _on_message(self, message: ZygoteMessage) -> None:
        if isinstance(message, Started):
            start = self._starts.pop(message.n, None)
            if message.error is None:
                self._exits[message.pid] = self._loop.create_future()
            if start is not None:
                if message.error is None:
                    _settle(start, message.pid)
                else:
                    _settle(start, error=_ZygoteGone(message.error))
            elif message.error is None:  # nobody waits for it any more
                _kill_group(message.pid)
        elif isinstance(message, Exited):
            exit_future = self._exits.get(message.pid)
            if exit_future is not None:
                _settle(exit_future, message.status)
            self._ended(message.pid)
            if self._spare is not None and self._spare[0] == message.pid:  # died unused
                self._drop_spare()
                self.want_spare()
        elif isinstance(message, Ready):
            self.warm = message.warm
            _settle(self._ready, message)
            self.want_spare()
        elif isinstance(message, Failed):
            _settle(self._ready, error=ExecutorLoadError(message.error))

    def mark_dead(self) -> None:
        """Treat the zygote as dead (its control socket failed): the next attempt starts anew."""
        self._gone()

    def _gone(self) -> None:
        if self.died.done():
            return
        self._drop_spare()
        self._loop.remove_reader(self.control.fileno())
        self.control.close()
        error = _ZygoteGone("the zygote process died")
        _settle(self._ready, error=error)
        for future in [*self._starts.values(), *self._exits.values()]:
            _settle(future, error=error)
        self._starts.clear()
        for pid in list(self._ends):
            self._ended(pid)
        _settle(self.died)

    # -- requests ----------------------------------------------------------------------

    async def ready(self, timeout: float) -> Ready:
        """Wait for the zygote's ready message; ExecutorLoadError, _ZygoteGone or TimeoutError."""
        async with asyncio.timeout(timeout):
            return await self._ready

    async def start_child(
        self, fds: list[int], *, url: str | None = None, secret: str | None = None
    ) -> int:
        """Have the zygote fork a child; its pid.

        ``fds`` are the write end of the child's output pipe and, without ``url``, its
        end of the channel's socket pair (then ``secret`` is the attempt's secret).
        """
        if not self.alive:
            raise _ZygoteGone("the zygote process died")
        self._n += 1
        spare, self._spare = self._spare, None
        if spare is not None:  # hand the task to the lent child directly
            pid, link = spare
            try:
                socket.send_fds(
                    link, [encode_control(RunRequest(n=self._n, url=url, secret=secret))], fds
                )
            except OSError:
                pass  # it died unused: ask the zygote instead
            else:
                self._exits.setdefault(pid, self._loop.create_future())
                return pid
            finally:
                link.close()
                self.want_spare()
        started: asyncio.Future[int] = self._loop.create_future()
        self._starts[self._n] = started
        data = encode_control(RunRequest(n=self._n, url=url, secret=secret))
        while True:
            try:
                socket.send_fds(self.control, [data], fds)
                break
            except (BlockingIOError, InterruptedError):
                await self._writable()
            except OSError as exc:
                self._starts.pop(self._n, None)
                raise _ZygoteGone(f"the zygote's control socket failed: {exc}") from exc
        return await started

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = self.control.fileno()
        self._loop.add_writer(fd, _settle, ready)
        try:
            await asyncio.wait({ready, self.died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._loop.remove_writer(fd)
        if self.died.done():
            raise _ZygoteGone("the zygote process died")

    def exit_of(self, pid: int) -> asyncio.Future[int]:
        """The wait status of child ``pid`` (fails with _ZygoteGone if the zygote dies first)."""
        future = self._exits.get(pid)
        if future is None:
            future = self._exits[pid] = self._loop.create_future()
            if self.died.done():
                _settle(future, error=_ZygoteGone("the zygote process died"))
        return future

    def end_of(self, pid: int) -> asyncio.Future[None]:
        """Completes as soon as child ``pid`` has ended, before the zygote reports its status.

        The kernel says so through a pidfd (Linux 5.3+), which spares the round trip
        through the zygote on every task; elsewhere this waits for the status.
        """
        entry = self._ends.get(pid)
        if entry is not None:
            return entry[0]
        ended: asyncio.Future[None] = self._loop.create_future()
        status = self.exit_of(pid)
        pidfd: int | None = None
        if status.done():
            _settle(ended)
        else:
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                pass  # unsupported, or gone already: the status will tell
            else:
                self._loop.add_reader(pidfd, self._ended, pid)
        self._ends[pid] = (ended, pidfd)
        return ended

    def _ended(self, pid: int) -> None:
        entry = self._ends.get(pid)
        if entry is not None:
            ended, pidfd = entry
            _settle(ended)
            if pidfd is not None:
                self._loop.remove_reader(pidfd)
                os.close(pidfd)
                self._ends[pid] = (ended, None)

    def forget(self, pid: int) -> None:
        """Stop tracking child ``pid``."""
        future = self._exits.pop(pid, None)
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # retrieved
        self._ended(pid)
        self._ends.pop(pid, None)

    # -- ending ------------------------------------------------------------------------

    async def death(self, timeout: float = 1.0) -> str:
        """How the zygote ended, in words (waits up to ``timeout`` for its exit status)."""
        await wait_any(self.exited, timeout=timeout)
        if not self.exited.done():
            return "closed its control socket"
        code = self.exited.result()
        if code < 0:
            return describe_status(-code)  # a signal number is its own wait status
        return f"exited with code {code}"

    async def stop(self, timeout: float = 3.0) -> None:
        """Close the control socket (the zygote kills its children and exits), wait, then kill."""
        if not self.died.done():
            self._gone()
        await wait_any(self.exited, timeout=timeout)
        if not self.exited.done():
            log.warning(
                "the zygote did not exit: killing it",
                extra={"action": "zygote_kill", "pid": self.pid},
            )
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
            await wait_any(self.exited, timeout=10)
        if self._poller is not None:
            self._poller.cancel()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        for pid, future in list(self._exits.items()):  # children the zygote could not report
            if not future.done() or future.exception() is not None:
                _kill_group(pid)
        self._exits.clear()


class _Attempt:
    """The attempt a sandbox is running."""

    __slots__ = ("pid", "reason", "stop", "task", "timeout_s")

    def __init__(self, task: Task, timeout_s: float | None) -> None:
        self.task = task
        self.timeout_s = timeout_s
        self.pid: int | None = None
        self.reason: str | None = None
        self.stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ForkedSandbox:
    """Runs each attempt in a process of its own (kind ``forked``); see the module docs.

    ``mode`` is ``auto`` (warm where safe, else spawn), ``warm`` or ``spawn``.
    ``memory_mb`` caps each child's address space; ``env`` lists the environment
    variables to pass (``NAME`` or ``NAME=VALUE``); ``mount_path`` is the task's
    directory of files. ``host`` is the address the connect-back server binds;
    ``start_timeout`` bounds the zygote's start (importing the executor included);
    ``exit_grace_s`` is how long a child that reported its result may take to exit
    before it is killed; ``output_limit`` bounds the output quoted in an error.
    ``python`` is the interpreter to run (default: the worker's own). ``channel``
    is how a child reaches the worker: ``fd`` (default), a socket pair it inherits
    (``fd://N`` connect URLs: no network, no handshake), or ``ws``, the
    connect-back WebSocket server on ``host`` (the k8s sandbox's path).
    """

    kind = "forked"

    def __init__(
        self,
        executor_ref: str,
        args: Mapping[str, str] | None = None,
        *,
        mode: str = "auto",
        memory_mb: int | None = None,
        env: Iterable[str] = (),
        mount_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
        exit_grace_s: float = 2.0,
        output_limit: int = 2048,
        error_limit: int = ERROR_LIMIT,
        python: str | None = None,
        channel: str = "fd",
    ) -> None:
        if channel not in ("fd", "ws"):
            raise ConfigError(f"invalid forked sandbox channel {channel!r}: fd or ws")
        if mode not in MODES:
            raise ConfigError(f"invalid forked sandbox mode {mode!r}: one of {', '.join(MODES)}")
        if memory_mb is not None and memory_mb <= 0:
            raise ConfigError(f"the sandbox memory limit must be a positive MB, not {memory_mb}")
        if not hasattr(os, "fork"):
            raise ConfigError("the forked sandbox needs a POSIX system (os.fork)")
        self.executor_ref = executor_ref
        self.args = dict(args or {})
        self.mode = mode
        self.memory_mb = memory_mb
        self.mount_path = os.path.abspath(os.fspath(mount_path)) if mount_path else None
        if self.mount_path is not None and not os.path.isdir(self.mount_path):
            raise ConfigError(f"the mount path {self.mount_path!r} is not a directory")
        self.environment = child_environment(env, self.mount_path)
        self.start_timeout = start_timeout
        self.exit_grace_s = exit_grace_s
        self.output_limit = output_limit
        self.error_limit = error_limit
        self.python = python or sys.executable
        self.channel = channel
        self._server = ConnectBackServer(host)
        self._zygote: _Zygote | None = None
        self._launching: asyncio.Task[_Zygote] | None = None
        self._spawn = mode == "spawn" or (mode == "auto" and not sys.platform.startswith("linux"))
        self._attempt: _Attempt | None = None
        self._started = False
        self._closed = False

    @property
    def warm(self) -> bool:
        """Whether tasks fork from a zygote with the executor loaded (else fresh interpreters)."""
        return not self._spawn

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the current zygote, if one runs."""
        zygote = self._zygote
        return zygote.pid if zygote is not None and zygote.alive else None

    @property
    def running_pid(self) -> int | None:
        """The pid of the running attempt's process, if any."""
        return self._attempt.pid if self._attempt is not None else None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connect-back server and the zygote; ExecutorLoadError if it cannot load."""
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        if self._started:
            return
        if self.channel == "ws":
            await self._server.start()
        try:
            await self._ensure_zygote()
        except BaseException:
            await self._server.close()
            raise
        self._started = True

    async def close(self) -> None:
        """Kill the running attempt's processes, stop the zygote and the server."""
        self._closed = True
        attempt = self._attempt
        if attempt is not None:
            self._stop(attempt, "sandbox closed")
            if attempt.pid is not None:
                _kill_group(attempt.pid)
        launching, self._launching = self._launching, None
        if launching is not None:
            launching.cancel()
            await asyncio.wait({launching})
            if not launching.cancelled() and launching.exception() is None:
                self._zygote = launching.result()
        zygote, self._zygote = self._zygote, None
        if zygote is not None:
            await zygote.stop()
        await self._server.close()

    async def run(self, task: Task, timeout_s: float | None) -> Outcome:
        """Run one attempt in a process of its own; task failures never raise."""
        if not self._started or self._closed:
            raise RuntimeError("the sandbox is not started" if not self._closed else "closed")
        if self._attempt is not None:
            raise RuntimeError("a sandbox runs one attempt at a time")
        attempt = self._attempt = _Attempt(task, timeout_s)
        try:
            return await self._run(attempt, timeout_s)
        finally:
            self._attempt = None

    async def cancel(self, reason: str) -> None:
        """Stop the running attempt, if any: its process group is killed."""
        attempt = self._attempt
        if attempt is not None:
            self._stop(attempt, reason)

    @staticmethod
    def _stop(attempt: _Attempt, reason: str) -> None:
        if not attempt.stop.done():
            attempt.reason = reason
            attempt.stop.set_result(None)

    # -- the zygote -------------------------------------------------------------------

    async def _ensure_zygote(self) -> _Zygote:
        zygote = self._zygote
        if zygote is not None and zygote.alive:
            return zygote
        if self._launching is None:
            self._launching = asyncio.create_task(self._relaunch(zygote))
        launching = self._launching
        try:
            return await asyncio.shield(launching)
        finally:
            if launching.done() and self._launching is launching:
                self._launching = None

    async def _relaunch(self, previous: _Zygote | None) -> _Zygote:
        if previous is not None:
            await previous.stop()
        zygote = await self._launch(spawn=self._spawn)
        if zygote.warm and self.mode == "auto":
            ready = zygote._ready.result()
            if ready.threads > 1:
                log.warning(
                    "loading the executor started threads: forking it is unsafe; "
                    "the forked sandbox falls back to spawn mode (a fresh interpreter per task)",
                    extra={"action": "zygote_spawn_fallback", "threads": ready.threads},
                )
                await zygote.stop()
                self._spawn = True
                zygote = await self._launch(spawn=True)
        self._zygote = zygote
        return zygote

    async def _launch(self, *, spawn: bool) -> _Zygote:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            self.python,
            "-c",
            ZYGOTE_BOOT,
            "--zygote",
            str(child.fileno()),
            "--executor",
            self.executor_ref,
            "--parent-pid",
            str(os.getpid()),
        ]
        for key, value in self.args.items():
            argv += ["--arg", f"{key}={value}"]
        if self.memory_mb:
            argv += ["--memory-limit", str(self.memory_mb)]
        if self.mount_path:
            argv += ["--chdir", self.mount_path]
        if spawn:
            argv.append("--spawn")
        if self.channel == "ws":
            argv.append("--websocket")
        try:
            # Started from the loop's thread on purpose: the zygote's PR_SET_PDEATHSIG
            # fires when the thread that forked it ends, so not from a thread pool.
            popen = subprocess.Popen(  # noqa: ASYNC220
                argv,
                pass_fds=(child.fileno(),),
                env=self.environment,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            parent.close()
            raise ExecutorLoadError(f"cannot start the forked sandbox's zygote: {exc}") from exc
        finally:
            child.close()
        zygote = _Zygote(popen, parent)
        try:
            ready = await zygote.ready(self.start_timeout)
        except ExecutorLoadError:
            await zygote.stop()
            raise
        except TimeoutError:
            await zygote.stop()
            raise ExecutorLoadError(
                f"the forked sandbox's zygote did not get ready in {self.start_timeout:g}s "
                f"(importing {self.executor_ref})"
            ) from None
        except _ZygoteGone:
            reason = await zygote.death()
            await zygote.stop()
            raise ExecutorLoadError(
                f"the forked sandbox's zygote {reason} before it was ready"
            ) from None
        except BaseException:
            await zygote.stop()
            raise
        log.info(
            "forked sandbox zygote ready",
            extra={
                "action": "zygote_ready",
                "pid": ready.pid,
                "mode": "warm" if ready.warm else "spawn",
                "executor": self.executor_ref,
            },
        )
        return zygote

    # -- one attempt -------------------------------------------------------------------

    @staticmethod
    async def _first(*futures: asyncio.Future[Any], deadline: float | None) -> None:
        timeout = (
            None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        )
        await wait_any(*futures, timeout=timeout)

    async def _run(self, attempt: _Attempt, timeout_s: float | None) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        for tries in (1, 2):
            zygote = await self._zygote_for(attempt, deadline)
            if isinstance(zygote, Outcome):
                return zygote
            secret = self._server.new_secret()
            expectation = self._server.expect(
                secret, task_frame(attempt.task, self.executor_ref, self.args, timeout_s)
            )
            read_fd, write_fd = os.pipe()
            output = _Output(read_fd, self.output_limit)
            ours: socket.socket | None = None
            theirs: socket.socket | None = None
            if self.channel == "fd":
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                self._server.attach(ours, expectation)
            pid: int | None = None
            try:
                try:
                    if theirs is not None:
                        pid = await zygote.start_child([write_fd, theirs.fileno()], secret=secret)
                    else:
                        pid = await zygote.start_child([write_fd], url=expectation.url)
                except _ZygoteGone as exc:
                    zygote.mark_dead()
                    if tries == 1:  # it died unnoticed: start a new one and try again
                        continue
                    return Outcome.failure(f"cannot start the executor process: {exc}")
                finally:
                    os.close(write_fd)
                    if theirs is not None:
                        theirs.close()
                attempt.pid = pid
                return await self._supervise(attempt, zygote, pid, expectation, output, deadline)
            finally:
                expectation.cancel()
                output.close()
                if pid is not None:
                    _kill_group(pid, leader_alive=not zygote.end_of(pid).done())
                    zygote.forget(pid)
        raise AssertionError("unreachable")

    async def _zygote_for(self, attempt: _Attempt, deadline: float | None) -> _Zygote | Outcome:
        """The running zygote (started anew if it died), or the Outcome that ends the attempt."""
        zygote = self._zygote
        if zygote is not None and zygote.alive and self._launching is None:
            return zygote
        launching = asyncio.ensure_future(self._ensure_zygote())
        await self._first(launching, attempt.stop, deadline=deadline)
        if not launching.done():
            launching.cancel()  # the launch itself goes on (shielded) for the next attempt
            return self._stopped(attempt)
        try:
            zygote = launching.result()
        except (ExecutorLoadError, _ZygoteGone) as exc:
            return Outcome.failure(f"cannot start the forked sandbox's zygote: {exc}")
        if attempt.stop.done():
            return self._stopped(attempt)
        return zygote

    async def _supervise(
        self,
        attempt: _Attempt,
        zygote: _Zygote,
        pid: int,
        expectation: Expectation,
        output: _Output,
        deadline: float | None,
    ) -> Outcome:
        exited = zygote.exit_of(pid)
        ended = zygote.end_of(pid)
        outcome = expectation.outcome
        await self._first(outcome, exited, zygote.died, attempt.stop, deadline=deadline)
        if outcome.done() and not outcome.cancelled() and outcome.exception() is None:
            reported = outcome.result()
            # The child exits once its result is written. Wait for that (briefly; the
            # group is killed anyway): the kernel has released its memory by then, so
            # the pod's next task never shares the machine with a dying one.
            await wait_any(ended, zygote.died, timeout=self.exit_grace_s)
            if reported.ok:
                return reported
            _kill_group(pid, leader_alive=not ended.done())
            await output.drain(0.5)  # its output will be quoted: read it to the end
            return self._reported(reported, output)
        over = exited.done() or outcome.done() or zygote.died.done()
        if attempt.stop.done() or not over:
            # Cancelled, or timed out: kill the whole process group.
            _kill_group(pid, leader_alive=not exited.done())
            await wait_any(exited, zygote.died, timeout=self.exit_grace_s)
            lingering = None if exited.done() or zygote.died.done() else self._linger(exited)
            return self._stopped(attempt, lingering)
        # No result: the process died, or broke its channel, or its zygote died.
        if not exited.done():
            await wait_any(exited, timeout=self.exit_grace_s)
        _kill_group(pid, leader_alive=not exited.done())
        if exited.done() and exited.exception() is None:
            await wait_any(outcome, timeout=0.2)  # a result may still be in flight
            if outcome.done() and not outcome.cancelled() and outcome.exception() is None:
                return self._reported(outcome.result(), output)
            await output.drain(0.5)
            return Outcome.failure(self._crash(pid, exited, outcome, output))
        await output.drain(0.5)
        if zygote.died.done():
            reason = await zygote.death()
            log.warning(
                "the forked sandbox's zygote died during an attempt",
                extra={"action": "zygote_died", "pid": zygote.pid, "reason": reason},
            )
            return Outcome.failure(
                self._with_output(
                    f"the sandbox's zygote process {reason} while the task ran (its executor "
                    "process was killed); a new zygote starts for the next task",
                    output,
                )
            )
        return Outcome.failure(self._crash(pid, exited, outcome, output))

    @staticmethod
    def _stopped(attempt: _Attempt, lingering: Awaitable[None] | None = None) -> Outcome:
        if attempt.reason is not None:
            return Outcome.failure(f"cancelled: {attempt.reason}", lingering=lingering)
        timeout_s = attempt.timeout_s
        what = f"timed out after {timeout_s:g}s" if timeout_s is not None else "timed out"
        return Outcome.failure(
            f"{what}: the executor's process group was killed", lingering=lingering
        )

    @staticmethod
    def _linger(exited: asyncio.Future[int]) -> Awaitable[None]:
        async def reaped() -> None:
            await asyncio.wait({exited})

        log.warning(
            "an executor process survives SIGKILL (uninterruptible?)", extra={"action": "lingering"}
        )
        return asyncio.ensure_future(reaped())

    def _reported(self, outcome: Outcome, output: _Output) -> Outcome:
        """The outcome the child reported, its error made clearer for memory and output."""
        if outcome.ok:
            return outcome
        error = outcome.error or "the executor failed"
        if self.memory_mb and error.startswith("MemoryError"):
            error = f"memory limit of {self.memory_mb} MB exceeded: {error}"
        return Outcome.failure(self._with_output(error, output))

    def _crash(
        self,
        pid: int,
        exited: asyncio.Future[int],
        outcome: asyncio.Future[Outcome],
        output: _Output,
    ) -> str:
        if exited.done() and not exited.cancelled() and exited.exception() is None:
            how = describe_status(exited.result())
            signalled = os.waitstatus_to_exitcode(exited.result()) == -signal.SIGKILL
        else:
            how, signalled = "stopped responding and was killed", False
        error = f"the executor process (pid {pid}) {how} before reporting a result"
        if signalled:
            error += " (SIGKILL from outside the sandbox: the kernel's OOM killer, or an operator)"
        lost = outcome.exception() if outcome.done() and not outcome.cancelled() else None
        if isinstance(lost, ChildLost) and "protocol error" in str(lost):
            error += f"; {lost}"
        tail = output.tail()
        if self.memory_mb and any(marker in tail for marker in _MEMORY_MARKERS):
            error = f"memory limit of {self.memory_mb} MB exceeded: {error}"
        return self._with_output(error, output)

    def _with_output(self, error: str, output: _Output) -> str:
        if len(error) > self.error_limit:
            error = error[: self.error_limit - 3] + "..."
        tail = output.tail()
        if not tail:
            return error
        heading = f"--- output of the executor process (last {self.output_limit} bytes) ---"
        return f"{error}\n{heading}\n{tail}"
