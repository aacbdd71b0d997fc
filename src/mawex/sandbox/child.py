"""The executor-process side of the connect-back channel, and the forked sandbox's zygote.

``mawex executor --connect URL`` (see :mod:`mawex.cli.executor`) calls
:func:`run_task`: connect to the worker's :class:`~mawex.sandbox.connect_back.ConnectBackServer`,
register with the URL's one-time secret, receive the ``task`` frame, load the executor
it names (unless one is preloaded), run it — ``async`` or not — and send the ``result``:
the JSON return value, or the exception as ``"<Type>: <message>"`` plus the tail of its
traceback (a value that is not JSON becomes a clear error too). After the ``ack`` the
process ends. Exit codes: 0 when a result was delivered (whether the task succeeded or
not), :data:`EXIT_REJECTED` when the worker refused the secret, :data:`EXIT_CHANNEL`
when the channel failed.

The zygote (``mawex executor --zygote``, :func:`zygote_main`) is the forked sandbox's
pre-started parent: it imports the executor and builds it once, then forks children
ahead of time. Each child waits for ONE ``run`` request — sent by the worker directly
to a child the zygote lent it (``want``/``spare``), or relayed by the zygote — and then
runs that one task (warm mode) or executes a fresh ``python -m mawex executor --connect
URL`` (spawn mode). Every child leads a session of its own (so its whole process group
can be killed), writes its stdout/stderr to the pipe that came with its request, and
dies with the zygote. The zygote reports each child's wait status; it ends, killing
every child's process group, when its control socket closes, when it receives SIGTERM,
or when its parent (the worker) dies.

Nothing here imports the worker or the master: this is the hot path of every task.
"""

from __future__ import annotations

import faulthandler
import gc
import inspect
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any

import msgspec

from mawex.errors import MawexError
from mawex.model import Task
from mawex.sandbox.executor_ref import Executor, format_error, load_executor
from mawex.wire.executor import (
    FRAME_HEADER,
    AckFrame,
    Register,
    Reject,
    Result,
    TaskFrame,
    decode_worker_frame,
    encode,
    split_connect_url,
)

__all__ = [
    "EXIT_CHANNEL",
    "EXIT_OK",
    "EXIT_REJECTED",
    "Exited",
    "Failed",
    "Ready",
    "RunRequest",
    "Spare",
    "Started",
    "Want",
    "ZygoteMessage",
    "apply_memory_limit",
    "decode_zygote_message",
    "execute",
    "run_task",
    "set_parent_death_signal",
    "zygote_main",
]

EXIT_OK = 0
EXIT_REJECTED = 3
EXIT_CHANNEL = 4

#: Largest control message (JSON) between the worker and the zygote.
CONTROL_MAX = 64 * 1024


# -- the task process -------------------------------------------------------------------


_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        import ctypes

        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    return _libc


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG).

    Returns False where unsupported (not Linux, or prctl unavailable).
    """
    libc = _load_libc()
    if not libc:
        return False
    try:
        return int(libc.prctl(1, int(sig), 0, 0, 0)) == 0  # 1 = PR_SET_PDEATHSIG
    except AttributeError:
        return False


def preload(websocket: bool = False) -> None:
    """Import what a task process needs, so that forked children find it loaded.

    The WebSocket client only with ``websocket``: it doubles the zygote's memory,
    which every fork copies the page tables of.
    """
    import resource  # noqa: F401

    if websocket:
        import websockets.sync.client  # noqa: F401
    _load_libc()


def apply_memory_limit(memory_mb: int) -> None:
    """Cap this process's address space (RLIMIT_AS, soft and hard) at ``memory_mb`` MiB."""
    import resource

    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


async def _await(value: Any) -> Any:
    return await value


def _run_async(value: Any) -> Any:
    import asyncio  # only async executors need it: not imported on every task's path

    return asyncio.run(_await(value))


def execute(
    frame: TaskFrame,
    executor: Executor | None = None,
    *,
    memory_mb: int | None = None,
    chdir: str | None = None,
) -> Result:
    """Run the task of ``frame`` and return its ``result`` frame; never raises.

    ``executor`` is used when it is the one the frame names (same reference and
    ``--arg``s); otherwise the frame's executor is loaded here. ``memory_mb`` caps
    the address space just before the executor's code runs; ``chdir`` is its
    working directory.
    """
    try:
        payload = msgspec.json.decode(frame.payload)
    except msgspec.DecodeError as exc:
        return Result(ok=False, error=f"invalid payload: {exc}")
    task = Task(id=frame.id, group=frame.group, payload=payload, attempt=frame.attempt)
    if executor is None or executor.ref != frame.executor:
        try:
            executor = load_executor(frame.executor, frame.args)
        except MawexError as exc:
            return Result(ok=False, error=str(exc))
        except BaseException as exc:  # an import that calls sys.exit, say
            return Result(ok=False, error=f"cannot load executor: {format_error(exc)}")
    try:
        if chdir:
            os.chdir(chdir)
        if memory_mb:
            apply_memory_limit(memory_mb)
        value = executor.call(task)
        if inspect.isawaitable(value):
            value = _run_async(value)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are task failures too
        return Result(ok=False, error=format_error(exc))
    try:
        return Result(ok=True, result=msgspec.Raw(msgspec.json.encode(value)))
    except BaseException as exc:
        return Result(
            ok=False, error=f"result is not JSON-serialisable: {type(exc).__name__}: {exc}"
        )


class _WebSocket:
    """The ``ws://`` transport: one JSON text frame per message."""

    def __init__(self, url: str, open_timeout: float, max_frame: int) -> None:
        from websockets.exceptions import ConnectionClosed, WebSocketException
        from websockets.sync.client import connect

        self._closed = ConnectionClosed
        try:
            self.ws = connect(
                url,
                open_timeout=open_timeout,
                close_timeout=1,
                max_size=max_frame,
                compression=None,
            ).__enter__()  # the caller's try/finally is the with-block: close() below
        except WebSocketException as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    def send(self, data: bytes) -> None:
        try:
            self.ws.send(data, text=True)
        except self._closed as exc:
            raise ConnectionResetError(str(exc)) from None

    def recv(self, timeout: float) -> bytes | str:
        try:
            return self.ws.recv(timeout=timeout)
        except self._closed as exc:
            raise ConnectionResetError(str(exc)) from None

    def close(self) -> None:
        self.ws.close()


class _InheritedSocket:
    """The ``fd://N`` transport: an inherited stream socket, length-prefixed frames."""

    def __init__(self, fd: int, max_frame: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self.max_frame = max_frame

    def send(self, data: bytes) -> None:
        self.sock.sendall(FRAME_HEADER.pack(len(data)) + data)

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        (size,) = FRAME_HEADER.unpack(self._exactly(FRAME_HEADER.size))
        if size > self.max_frame:
            raise OSError(f"frame of {size} bytes over the limit of {self.max_frame}")
        return self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionResetError("the worker closed the connection")
            got += n
        return bytes(buffer)

    def close(self) -> None:
        self.sock.close()


def run_task(
    url: str,
    *,
    executor: Executor | None = None,
    preloaded_args: Mapping[str, str] | None = None,
    memory_mb: int | None = None,
    chdir: str | None = None,
    open_timeout: float = 10.0,
    max_frame: int = 64 * 1024 * 1024,
) -> int:
    """Connect to ``url``, run its task, report; the process's exit code.

    ``url`` is ``ws(s)://host:port/v1/executor?secret=S`` or ``fd://N?secret=S`` (an
    inherited, connected stream socket). ``executor`` (built with
    ``preloaded_args``) is used when the task names it. Problems of the channel
    itself are printed to stderr: the worker shows its tail.
    """
    try:
        base, secret = split_connect_url(url)
    except ValueError as exc:
        print(f"mawex executor: {exc}", file=sys.stderr)
        return EXIT_CHANNEL
    channel: _WebSocket | _InheritedSocket
    try:
        if base.startswith("fd://"):
            channel = _InheritedSocket(int(base[5:]), max_frame)
        else:
            channel = _WebSocket(base, open_timeout, max_frame)
    except (OSError, TimeoutError) as exc:
        print(f"mawex executor: cannot connect to {base}: {exc}", file=sys.stderr)
        return EXIT_CHANNEL
    try:
        channel.send(encode(Register(secret=secret, pid=os.getpid())))
        frame = decode_worker_frame(channel.recv(open_timeout))
        if isinstance(frame, Reject):
            print(
                f"mawex executor: the worker refused this executor: {frame.reason}",
                file=sys.stderr,
            )
            return EXIT_REJECTED
        if not isinstance(frame, TaskFrame):
            print(f"mawex executor: expected a task frame, got {frame!r}", file=sys.stderr)
            return EXIT_CHANNEL
        if executor is not None and dict(preloaded_args or {}) != frame.args:
            executor = None  # built with other --args: load the one the task names
        result = execute(frame, executor, memory_mb=memory_mb, chdir=chdir)
        _flush()  # the output comes before the result: the worker quotes its tail
        channel.send(encode(result))
        if isinstance(channel, _InheritedSocket):
            return EXIT_OK  # a Unix socket keeps what was written: no need to wait for the ack
        reply = decode_worker_frame(channel.recv(30.0))
        if not isinstance(reply, AckFrame):
            print(f"mawex executor: expected an ack, got {reply!r}", file=sys.stderr)
            return EXIT_CHANNEL
        return EXIT_OK
    except (TimeoutError, OSError) as exc:
        print(f"mawex executor: connection to the worker lost: {exc}", file=sys.stderr)
        return EXIT_CHANNEL
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"mawex executor: invalid frame from the worker: {exc}", file=sys.stderr)
        return EXIT_CHANNEL
    finally:
        channel.close()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def line_buffered_output() -> None:
    """Make stdout line-buffered, so that its lines and stderr's keep their order in a pipe."""
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass


def exit_now(code: int) -> None:
    """Flush stdio and end the process at once (no atexit handlers, no thread joins)."""
    _flush()
    os._exit(code)


# -- the zygote's control protocol -------------------------------------------------------


class _Control(msgspec.Struct, frozen=True, tag_field="op"):
    pass


class RunRequest(_Control, frozen=True, tag="run"):
    """Worker → zygote: start a child for one attempt.

    The write end of the child's output pipe rides along (SCM_RIGHTS), then, when
    ``url`` is None, the child's end of a socket pair: the child connects to
    ``fd://<that fd>?secret=<secret>``. Otherwise it connects to ``url``.
    """

    n: int
    url: str | None = None
    secret: str | None = None


class Ready(_Control, frozen=True, tag="ready"):
    """Zygote → worker: the executor is loaded (warm) or checked (spawn)."""

    pid: int
    warm: bool
    threads: int


class Failed(_Control, frozen=True, tag="failed"):
    """Zygote → worker: the executor cannot be loaded; the zygote exits."""

    error: str


class Started(_Control, frozen=True, tag="started"):
    """Zygote → worker: request ``n`` runs as process ``pid`` (the leader of its own group)."""

    n: int
    pid: int = 0
    error: str | None = None


class Exited(_Control, frozen=True, tag="exited"):
    """Zygote → worker: child ``pid`` ended with wait status ``status``."""

    pid: int
    status: int


class Want(_Control, frozen=True, tag="want"):
    """Worker → zygote: fork a spare child and lend it to me (a ``spare`` message answers)."""


class Spare(_Control, frozen=True, tag="spare"):
    """Zygote → worker: child ``pid`` waits for ONE ``run`` request on the socket that rides
    along (SCM_RIGHTS). Handing it the task directly spares the zygote's hop on the task's
    path; the zygote still reports the child's exit."""

    pid: int


ZygoteMessage = RunRequest | Ready | Failed | Started | Exited | Want | Spare
_control_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(ZygoteMessage)


def encode_control(message: ZygoteMessage) -> bytes:
    """Encode one control message."""
    return _control_encoder.encode(message)


def decode_zygote_message(data: bytes) -> ZygoteMessage:
    """Decode one control message; raises msgspec errors on bad input."""
    message: ZygoteMessage = _control_decoder.decode(data)
    return message


# -- the zygote ----------------------------------------------------------------------------


class _Zygote:
    """The zygote's state: its control socket, its children, and how it forks them."""

    def __init__(
        self,
        control: socket.socket,
        executor: Executor | None,
        args: Mapping[str, str],
        *,
        spawn: bool,
        memory_mb: int | None,
        chdir: str | None,
    ) -> None:
        self.control = control
        self.executor = executor
        self.args = dict(args)
        self.spawn = spawn
        self.memory_mb = memory_mb
        self.chdir = chdir
        self.children: set[int] = set()
        #: A child forked ahead for a run request, and the socket to hand it the task.
        self.spare: tuple[int, socket.socket] | None = None
        #: Whether the worker asked for a spare of its own.
        self.wanted = False
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def send(self, message: ZygoteMessage) -> None:
        try:
            self.control.send(encode_control(message))
        except OSError:
            self.stopping = True  # the worker is gone

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, _noop)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self.stopping:
                if self.wanted:
                    self._lend_spare()
                for key, _ in self.selector.select():
                    if key.data == "wake":
                        self._drain_wakeup()
                        self._reap()
                    elif not self._on_control():
                        self.stopping = True
                self._reap()
        finally:
            self.shutdown()

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if self.spare is not None and self.spare[0] == pid:  # died unused
                self.spare[1].close()
                self.spare = None
                continue
            self.send(Exited(pid=pid, status=status))

    def _on_control(self) -> bool:
        """Handle one control message; False once the worker closed the socket."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.control, CONTROL_MAX, 4)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            message = decode_zygote_message(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            print(f"mawex zygote: ignoring an invalid control message: {exc}", file=sys.stderr)
            for fd in fds:
                os.close(fd)
            return True
        if isinstance(message, RunRequest):
            self._fork(message, fds)
        elif isinstance(message, Want):
            self.wanted = True
            for fd in fds:
                os.close(fd)
        else:
            for fd in fds:
                os.close(fd)
        return True

    def _fork(self, request: RunRequest, fds: list[int]) -> None:
        """Hand ``request`` to the spare child (forked ahead of time), report its pid."""
        error = None
        pid = 0
        if not fds:
            error = "no output pipe came with the request"
        elif request.url is None and (len(fds) < 2 or not request.secret):
            error = "no channel socket or secret came with the request"
        else:
            error = "cannot hand the task to a forked child"
            for _ in range(2):
                try:
                    spare, link = self._take_spare()
                except OSError as exc:
                    error = f"fork failed: {exc}"
                    break
                try:
                    socket.send_fds(link, [encode_control(request)], fds)
                except OSError:  # the spare died unused: fork another one
                    _kill_quietly(spare)
                    continue
                finally:
                    link.close()
                pid, error = spare, None
                break
        for fd in fds:
            os.close(fd)
        if error is not None:
            self.send(Started(n=request.n, error=error))
        else:
            self.send(Started(n=request.n, pid=pid))

    def _lend_spare(self) -> None:
        """Give the worker a spare child (its socket rides along): the next task skips us."""
        try:
            pid, link = self._take_spare()
        except OSError as exc:  # out of processes: the worker falls back to run requests
            print(f"mawex zygote: cannot fork: {exc}", file=sys.stderr)
            return
        self.wanted = False
        try:
            socket.send_fds(self.control, [encode_control(Spare(pid=pid))], [link.fileno()])
        except OSError:
            _kill_quietly(pid)
            self.stopping = True  # the worker is gone
        finally:
            link.close()

    def _take_spare(self) -> tuple[int, socket.socket]:
        if self.spare is None:
            self._make_spare()
        assert self.spare is not None
        spare, self.spare = self.spare, None
        return spare

    def _make_spare(self) -> None:
        """Fork the child that will run the next task, so that no task waits for a fork."""
        sys.stdout.flush()
        sys.stderr.flush()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # the child: never returns
            ours.close()
            self._child(theirs)
        theirs.close()
        self.children.add(pid)
        self.spare = (pid, ours)

    def _child(self, link: socket.socket) -> None:
        """A spare child: get ready, wait for its request, run it (or exec), exit."""
        code = EXIT_CHANNEL
        try:
            zygote = os.getppid()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            self.selector.close()
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            os.setsid()
            set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != zygote:  # the zygote died before the signal was armed
                os._exit(EXIT_CHANNEL)
            if not self.spawn:
                faulthandler.enable()
                line_buffered_output()
            data, fds, _flags, _addr = socket.recv_fds(link, CONTROL_MAX, 4)
            link.close()
            if not data or not fds:
                os._exit(0)  # the zygote is closing: no task for this one
            request = decode_zygote_message(data)
            assert isinstance(request, RunRequest)
            url = request.url or f"fd://{fds[1]}?secret={request.secret}"
            os.dup2(fds[0], 1)
            os.dup2(fds[0], 2)
            os.close(fds[0])
            for fd in fds[2:]:
                os.close(fd)
            if self.spawn:
                if request.url is None:
                    os.set_inheritable(fds[1], True)
                self._exec(url)
            code = run_task(
                url,
                executor=self.executor,
                preloaded_args=self.args,
                memory_mb=self.memory_mb,
                chdir=self.chdir,
            )
        except BaseException as exc:
            try:
                print(f"mawex executor: {format_error(exc)}", file=sys.stderr)
            except BaseException:
                pass
        finally:
            exit_now(code)

    def _exec(self, url: str) -> None:
        argv = [sys.executable, "-c", EXECUTOR_BOOT, "--connect", url]
        if self.memory_mb:
            argv += ["--memory-limit", str(self.memory_mb)]
        if self.chdir:
            argv += ["--chdir", self.chdir]
        os.execv(sys.executable, argv)

    def shutdown(self) -> None:
        """Kill every child's process group and reap them."""
        if self.spare is not None:
            self.spare[1].close()
            self.spare = None
        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.discard(pid)
        try:
            self.control.close()
        except OSError:
            pass


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD handler: its only job is to wake the selector through the wakeup fd."""


def _check_in_child(executor_ref: str, args: Mapping[str, str]) -> str | None:
    """Load the executor in a throwaway forked child; its error, or None when it loads."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        error = ""
        try:
            load_executor(executor_ref, args)
        except BaseException as exc:
            error = str(exc) if isinstance(exc, MawexError) else format_error(exc)
        try:
            os.write(write, error.encode()[: CONTROL_MAX // 2] or b"-")
        finally:
            exit_now(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    if text == "-":
        return None
    return text or "the executor check process died while loading the executor"


def zygote_main(
    control_fd: int,
    executor_ref: str,
    args: Mapping[str, str] | None = None,
    *,
    spawn: bool = False,
    memory_mb: int | None = None,
    chdir: str | None = None,
    parent_pid: int | None = None,
    websocket: bool = False,
) -> int:
    """Serve fork requests on the control socket ``control_fd``; the process's exit code.

    Warm (``spawn=False``): the executor is loaded here, once, and every child runs
    its task with it. Spawn: the executor is only checked (in a throwaway child) and
    every child executes a fresh interpreter. ``websocket``: the children connect
    back over ``ws://`` URLs (preload the client), not over inherited sockets.
    """
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    preload(websocket)
    set_parent_death_signal(signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        return EXIT_CHANNEL  # the worker is already gone
    executor: Executor | None = None
    if spawn:
        error = _check_in_child(executor_ref, args or {})
    else:
        try:
            executor = load_executor(executor_ref, args or {})
            error = None
        except MawexError as exc:
            error = str(exc)
        except BaseException as exc:
            error = f"cannot load executor {executor_ref!r}: {format_error(exc)}"
    zygote = _Zygote(control, executor, args or {}, spawn=spawn, memory_mb=memory_mb, chdir=chdir)
    if error is not None:
        zygote.send(Failed(error=error))
        return 1
    threads = threading.active_count()
    if executor is not None:
        gc.freeze()  # the children need not scan (and copy-on-write) what the zygote built
    zygote.send(Ready(pid=os.getpid(), warm=not spawn, threads=threads))
    zygote.serve()
    return 0


#: How a spawn-mode child runs ``mawex executor``: ``python -c EXECUTOR_BOOT --connect URL``
#: is that very command, loaded without the other commands of ``mawex`` (a third of the
#: start-up time of ``python -m mawex executor``, which a fresh interpreter pays per task).
EXECUTOR_BOOT = (
    "import sys; sys.path[0] = __import__('os').getcwd(); "
    "from mawex.cli.executor import executor; executor.main(prog_name='mawex executor')"
)

#: How the forked sandbox starts its zygote: ``python -c ZYGOTE_BOOT --zygote FD ...``. Lighter
#: than ``python -m mawex executor --zygote FD ...`` (which works too): no command-line
#: framework in the zygote, so less memory to fork per task.
ZYGOTE_BOOT = "from mawex.sandbox.child import zygote_command; zygote_command()"


def zygote_command(argv: list[str] | None = None) -> None:
    """Parse the zygote's options (those of ``mawex executor --zygote``), serve, exit."""
    import argparse

    from mawex.errors import ConfigError
    from mawex.sandbox.executor_ref import parse_args

    if sys.path and sys.path[0] == "":  # python -c: make the working directory absolute, as
        sys.path[0] = os.getcwd()  # -m does, since tasks may change it (--mount-path)
    parser = argparse.ArgumentParser(prog="mawex executor --zygote")
    parser.add_argument("--zygote", dest="control_fd", type=int, required=True)
    parser.add_argument("--executor", required=True)
    parser.add_argument("--arg", action="append", default=[])
    parser.add_argument("--memory-limit", type=int, default=None)
    parser.add_argument("--chdir", default=None)
    parser.add_argument("--spawn", action="store_true")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--websocket", action="store_true")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(options.arg)
    except ConfigError as exc:
        parser.error(str(exc))
    exit_now(
        zygote_main(
            options.control_fd,
            options.executor,
            args,
            spawn=options.spawn,
            memory_mb=options.memory_limit,
            chdir=options.chdir,
            parent_pid=options.parent_pid,
            websocket=options.websocket,
        )
    )
