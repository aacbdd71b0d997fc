"""The engine: one asyncio task owns the master state.

Commands arrive in an inbox. Each loop turn drains the inbox, lets the core
decide (events are applied as they are emitted), runs timers and dispatch, then
appends the turn's events to the journal in ONE fenced transaction (group
commit). Only after the commit do replies, worker messages and topic events go
out, so nothing is acknowledged that is not durable. If an append fails, the
state may be ahead of the journal: the engine steps down and rebuilds from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from mawex.busy_poll import BusyPoll
from mawex.core import decide, dispatch, timers, views
from mawex.core import events as ev
from mawex.core.state import MasterState, WorkerInfo, collector_paused
from mawex.errors import FencedOut, JournalError, MawexError, NotFound, NotLeader
from mawex.journal.base import LEADER, STANDBY, Journal, Lease, Member, Record, Snapshot
from mawex.master.topic import Topic
from mawex.model import TaskStatus
from mawex.wire import worker as wire

log = logging.getLogger("mawex.master")

T = TypeVar("T")
Role = Literal["starting", "standby", "leader", "stopped"]
READ_CHUNK = 5000


class Session(Protocol):
    """A worker connection as the engine sees it."""

    def send(self, frame: bytes) -> None:
        """Queue a frame; never blocks."""

    def flush(self) -> None:
        """Write the frames queued so far now, if the connection can take them at once."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection soon."""


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How a master behaves; durations in seconds."""

    master_id: str = "default"
    advertise: str | None = None
    lease_ttl: float = 5.0
    limits: decide.Limits = field(default_factory=decide.Limits)
    snapshot_every: int = 50_000
    retain_topic_events: int = 1_000_000
    tick_s: float = 0.1
    max_turn_commands: int = 2000
    #: Told to workers in their welcome: a larger result fails its attempt.
    max_result_bytes: int | None = None
    #: Rebuild the state at start with Python's cycle collector paused, then move it
    #: out of the collector's reach (``gc.freeze``): a replay takes about half the
    #: time, and no later full collection scans the tasks loaded at start. Both act
    #: on the whole process: for a process that only runs the master (``mawex
    #: master``), not for a master embedded in another program.
    gc_freeze: bool = False
    #: After each turn that changed the state (a task accepted, dispatched, finished,
    #: ...; not a heartbeat or a read), keep the event loop polling this many seconds
    #: instead of sleeping (:mod:`mawex.busy_poll`): a request or a worker's
    #: message arriving meanwhile skips the wake-up of an idle process. Lower
    #: round-trip latency for up to one core of CPU while traffic is sparse. 0: off.
    busy_poll_s: float = 0.0


class _Command:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[MasterState, float], Any], future: asyncio.Future[Any] | None):
        self.fn = fn
        self.future = future


class Engine:
    """A master: leader or standby, serving commands against one journal."""

    def __init__(
        self,
        journal: Journal,
        settings: EngineSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.settings = settings or EngineSettings()
        window = self.settings.busy_poll_s
        #: Keeps the loop polling after turns that changed the state (``busy_poll_s``), or None.
        self.busy_poll = BusyPoll(window) if window else None
        self.clock = clock
        self.holder = f"{self.settings.master_id}-{uuid.uuid4().hex[:12]}"
        self.state = MasterState()
        self.topic = Topic(journal)
        self.role: Role = "starting"
        self.lease: Lease | None = None
        self.leader_seen: Lease | None = None
        #: Set when a client or worker looked for a leader here in vain: a standby then
        #: polls the lease at once (its leader may have just died) instead of on schedule.
        self.leader_wanted = asyncio.Event()
        #: The masters that announced themselves, as last read, and when (by ``clock``).
        self.members: list[Member] = []
        self.members_read_at = 0.0
        self.sessions: dict[str, Session] = {}
        self.started_at = clock()
        self.stats: dict[str, float] = {
            "appends": 0,
            "appended_events": 0,
            "append_seconds": 0.0,
            "failovers": 0,
            "lease_renewals": 0,
            "snapshots": 0,
        }
        #: Called after each commit with its events, the turn's time and the seconds the
        #: append took; soon after, not within the turn: they must never raise.
        self.observers: list[Callable[[list[ev.Event], float, float], None]] = []
        self._inbox = _Inbox()
        self._waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._snapshot_offset = 0
        self._trim_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._leader_event = asyncio.Event()
        # True when the state may hold events the journal does not (a failed append,
        # a record that failed half-applied): it must be rebuilt before any use
        self._state_dirty = False

    # -- lifecycle --------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    @property
    def epoch(self) -> int:
        if self.lease is not None:
            return self.lease.epoch
        return self.leader_seen.epoch if self.leader_seen else 0

    @property
    def leader_url(self) -> str | None:
        if self.is_leader:
            return self.settings.advertise
        lease = self.leader_seen
        if lease is None or lease.expires_at < self.clock():
            return None
        return lease.url

    async def start(self) -> None:
        """Open the journal, rebuild the state and start the leadership loop."""
        await self.journal.open()
        self._stopping = False
        with collector_paused(freeze=True) if self.settings.gc_freeze else contextlib.nullcontext():
            await self._rebuild()
        self.role = "standby"
        from mawex.master.leadership import run_leadership

        self._tasks.append(asyncio.create_task(run_leadership(self), name="mawex-leadership"))

    async def wait_leader(self, timeout: float | None = None) -> None:
        """Wait until this master is the leader."""
        async with asyncio.timeout(timeout):
            await self._leader_event.wait()

    async def stop(self) -> None:
        """Stop serving; a leader hands its lease over at once."""
        self._stopping = True
        if self.is_leader:
            await self._stop_loop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.lease is not None:
            with contextlib.suppress(MawexError):
                await self.journal.release(self.lease)
            log.info("lease released", extra={"action": "lease_released", "epoch": self.epoch})
        self._drop_sessions("master stopping")
        self.role = "stopped"
        self.lease = None
        await self.journal.close()

    async def rebuild(self) -> None:
        """Throw the state away and rebuild it from the journal (snapshot + replay)."""
        self._state_dirty = True
        await self._rebuild()

    async def _rebuild(self) -> None:
        snapshot = await self.journal.load_snapshot()
        if snapshot is not None:
            self._load_snapshot(snapshot)
        else:
            self.state = MasterState()
            self._snapshot_offset = 0
        self._state_dirty = False
        await self.catch_up()
        self.topic.reset(self.state.topic_next)

    async def catch_up(self) -> int:
        """Apply journal records written by others since our offset (standby tailing).

        If the leader trimmed records we have not applied yet, a newer snapshot
        covers them: load it and continue from there. Trim keeps the retained topic
        records below the snapshot, so a read can return a record that follows ours
        and then gaps: only the contiguous prefix is applied, the gap after it is
        found by the next read. A state that may be ahead of the journal (see
        :meth:`step_down`) is rebuilt first.
        """
        if self._state_dirty:
            await self._rebuild()
            return 0
        applied = 0
        while True:
            records = await self.journal.read(self.state.offset + 1, READ_CHUNK)
            if records and records[0].offset != self.state.offset + 1:
                snapshot = await self.journal.load_snapshot()
                if (
                    snapshot is None
                    or snapshot.offset + 1 < records[0].offset
                    or snapshot.offset <= self.state.offset
                ):
                    raise JournalError(
                        f"journal gap: expected offset {self.state.offset + 1}, "
                        f"found {records[0].offset} and no snapshot covering it"
                    )
                self._load_snapshot(snapshot)
                continue
            if not records:
                return applied
            contiguous = 0
            for record in records:
                if record.offset != self.state.offset + 1:
                    break  # records trimmed under us: the next read finds the snapshot
                try:
                    self.state.apply(ev.decode(record.body))
                except Exception:
                    self._state_dirty = True  # possibly half-applied
                    raise
                self.state.offset = record.offset
                contiguous += 1
            applied += contiguous
            if self.role != "leader":
                self.topic.publish(records[:contiguous])

    def _load_snapshot(self, snapshot: Snapshot) -> None:
        state = MasterState.from_snapshot(snapshot.body)
        state.offset = snapshot.offset
        self.state = state
        self._snapshot_offset = snapshot.offset
        self.topic.reset(state.topic_next)

    async def become_leader(self, lease: Lease) -> None:
        """Called by the leadership loop with a freshly acquired lease."""
        self.lease = lease
        self.leader_seen = lease
        await self.catch_up()
        self.state.leader_since = self.clock()
        self.topic.reset(self.state.topic_next)
        self.role = "leader"
        self.stats["failovers"] += 1
        self._leader_event.set()
        self._loop_task = asyncio.create_task(self._run(), name="mawex-engine")
        log.info(
            "became leader",
            extra={"action": "leader_elected", "epoch": lease.epoch, "offset": self.state.offset},
        )

    async def step_down(self, reason: str) -> None:
        """Stop leading: drop sessions, fail waiting callers, rebuild from the journal."""
        if self.role != "leader":
            return
        log.warning("stepping down: %s", reason, extra={"action": "step_down", "epoch": self.epoch})
        self.role = "standby"
        self._leader_event.clear()
        self.lease = None
        await self._stop_loop()
        self._drop_sessions("leader stepped down")
        # the state may hold this turn's events whose append failed: until a rebuild
        # succeeds (the journal may be down now), nothing may build on it
        self._state_dirty = True
        with contextlib.suppress(MawexError):
            await self._rebuild()

    async def _stop_loop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        trim, self._trim_task = self._trim_task, None
        if trim is not None:
            trim.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trim
        _not_leading(self._inbox.drain(1 << 30), self.leader_url)

    def _drop_sessions(self, reason: str) -> None:
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            session.close(1012, reason)
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()

    # -- commands -------------------------------------------------------------------

    def _require_leader(self) -> None:
        if self._stopping:  # its loop is gone or going: nothing queued now would run
            raise NotLeader(None)
        if not self.is_leader:
            self.leader_wanted.set()
            raise NotLeader(self.leader_url)

    async def call(self, fn: Callable[[MasterState, float], T]) -> T:
        """Run ``fn(state, now)`` in the engine loop; returns once its events are durable."""
        self._require_leader()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inbox.put(_Command(fn, future))
        return await future

    def post(self, fn: Callable[[MasterState, float], Any]) -> None:
        """Like :meth:`call` without waiting for the reply."""
        if self.is_leader and not self._stopping:
            self._inbox.put(_Command(fn, None))

    async def submit(self, task: decide.NewTask) -> bool:
        """Accept a task; returns whether it was a duplicate."""
        limits = self.settings.limits
        return await self.call(lambda s, now: decide.submit(s, task, now, limits))

    async def submit_batch(self, tasks: list[decide.NewTask]) -> tuple[int, list[int]]:
        """Accept ``tasks``; the number accepted and the positions of the duplicates."""
        limits = self.settings.limits
        return await self.call(lambda s, now: decide.submit_batch(s, tasks, now, limits))

    async def cancel(self, group: str, id: str) -> dict[str, Any]:
        return await self.call(lambda s, now: views.task_view(decide.cancel(s, group, id, now)))

    def get(self, group: str, id: str) -> dict[str, Any]:
        record = self.state.tasks.get((group, id))
        if record is None:
            raise NotFound(f"no task {group}/{id}")
        return views.task_view(record)

    async def wait_terminal(self, group: str, id: str, timeout: float) -> dict[str, Any]:
        """The task's view once it is terminal, or as it is after ``timeout`` seconds."""
        record = self.state.tasks.get((group, id))
        if record is None:
            raise NotFound(f"no task {group}/{id}")
        if not record.status.terminal and timeout > 0:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault((group, id), [])
            waiters.append(future)
            try:
                async with asyncio.timeout(timeout):
                    await future  # this caller's own future: cancelling it harms no one
            except TimeoutError:
                pass
            finally:
                if future in waiters:
                    waiters.remove(future)
                if not waiters:
                    self._waiters.pop((group, id), None)
        return self.get(group, id)

    def set_members(self, members: list[Member]) -> None:
        """Record the announced masters just read from the journal (membership loop)."""
        self.members = members
        self.members_read_at = self.clock()

    def masters_view(self, now: float) -> list[dict[str, Any]]:
        """Every master seen recently, this one included, the leader first.

        A master is ``leader`` if it holds the live lease; another that still
        announces itself as leader (paused, not yet told) shows as ``standby``.
        """
        lease = self.lease or self.leader_seen
        leader = lease.holder if lease is not None and lease.expires_at > now else None
        since_read = max(0.0, now - self.members_read_at)
        masters: dict[str, dict[str, Any]] = {}
        for m in self.members:
            role = m.role
            if leader is not None:
                role = LEADER if m.holder == leader else STANDBY
            masters[m.holder] = {
                "url": m.url,
                "role": role,
                "holder": m.holder,
                "seen_s_ago": round(m.seen_s_ago + since_read, 3),
            }
        masters[self.holder] = {
            "url": self.settings.advertise,
            "role": LEADER if self.is_leader else STANDBY,
            "holder": self.holder,
            "seen_s_ago": 0.0,
        }
        return sorted(masters.values(), key=lambda m: (m["role"] != LEADER, m["url"] or ""))

    def state_view(self) -> dict[str, Any]:
        now = self.clock()
        body = views.state_view(self.state, now)
        lease = self.lease or self.leader_seen
        masters = self.masters_view(now)
        body.update(
            {
                "leader": self.is_leader,
                "epoch": self.epoch,
                "master_id": self.settings.master_id,
                "role": self.role,
                "url": self.settings.advertise,
                "holder": self.holder,
                "leader_url": self.leader_url,
                "lease_holder": lease.holder if lease else None,
                "lease_expires_in_s": round(lease.expires_at - now, 3) if lease else None,
                "masters": masters,
                "standbys": [m["url"] or m["holder"] for m in masters if m["role"] == STANDBY],
                "offset": self.state.offset,
                "topic_next": self.state.topic_next,
            }
        )
        return body

    # -- worker sessions --------------------------------------------------------------

    async def worker_hello(self, hello: wire.Hello, session: Session) -> WorkerInfo:
        """Register a worker session; the welcome (and any work) follows on the session."""

        def run(state: MasterState, now: float) -> WorkerInfo:
            old = self.sessions.get(hello.worker)
            if old is not None and old is not session:
                old.close(1000, "replaced by a newer session")
            self.sessions[hello.worker] = session
            state.send(
                hello.worker,
                wire.Welcome(
                    epoch=self.epoch,
                    heartbeat_s=self.settings.limits.heartbeat_s,
                    master_id=self.settings.master_id,
                    max_result_bytes=self.settings.max_result_bytes,
                ),
            )
            info = decide.hello(state, hello, now)
            log.info(
                "worker checked in",
                extra={
                    "action": "worker_checked_in",
                    "worker": hello.worker,
                    "group": hello.group,
                    "pod": hello.pod,
                },
            )
            return info

        return await self.call(run)

    def worker_message(self, worker_id: str, session: Session, message: wire.WorkerMessage) -> None:
        """Handle a frame from a checked-in worker."""
        if isinstance(message, wire.Heartbeat):
            worker = self.state.workers.get(worker_id)
            if worker is not None and self.sessions.get(worker_id) is session:
                worker.last_seen = self.clock()
            return

        def run(state: MasterState, now: float) -> None:
            if self.sessions.get(worker_id) is not session:
                return
            worker = state.workers.get(worker_id)
            if worker is None:
                return
            worker.last_seen = now
            if isinstance(message, wire.Finished):
                decide.finished(state, worker, message, now)
            elif isinstance(message, wire.Free):
                decide.free(state, worker, message, now)
            elif isinstance(message, wire.Bye):
                decide.bye(state, worker, message, now)
                self.sessions.pop(worker_id, None)
                log.info(
                    "worker checked out",
                    extra={"action": "worker_checked_out", "worker": worker_id},
                )

        self.post(run)

    def worker_disconnected(self, worker_id: str, session: Session) -> None:
        """The connection closed; the worker has ``worker_grace_s`` to come back."""

        def run(state: MasterState, now: float) -> None:
            if self.sessions.get(worker_id) is not session:
                return
            del self.sessions[worker_id]
            worker = state.workers.get(worker_id)
            if worker is not None:
                state.disconnect_worker(worker, now)
                log.info(
                    "worker disconnected",
                    extra={"action": "worker_disconnected", "worker": worker_id},
                )

        self.post(run)

    # -- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        inbox = self._inbox
        next_tick = 0.0
        tick_s = self.settings.tick_s
        max_commands = self.settings.max_turn_commands
        busy_poll = self.busy_poll
        commands: list[_Command] = []
        try:
            while True:
                await inbox.wait(max(0.0, next_tick - self.clock()))
                commands = inbox.drain(max_commands)
                now = self.clock()
                changed = await self._turn(commands, now, run_timers=now >= next_tick)
                if now >= next_tick:
                    next_tick = now + tick_s
                if changed and busy_poll is not None:
                    busy_poll.kick()
        except asyncio.CancelledError:
            # stopped in the middle of a turn (stop, step-down): its callers must hear
            # so, or they would wait for a reply that never comes
            _not_leading(commands)
            raise
        except (FencedOut, JournalError) as exc:
            asyncio.get_running_loop().create_task(self.step_down(str(exc)))
        except Exception as exc:
            # Anything else (a driver error the journal did not wrap, a bug in a decision)
            # must not leave a leader without its loop: it would keep renewing its lease
            # and queueing commands that nobody runs. Fail this turn's callers and step
            # down, which rebuilds the state from the journal.
            log.exception("engine loop failed", extra={"action": "engine_failed"})
            _not_leading(commands)
            asyncio.get_running_loop().create_task(self.step_down(f"engine loop failed: {exc!r}"))

    async def _turn(self, commands: list[_Command], now: float, run_timers: bool) -> bool:
        """One turn of the loop; whether it changed the state (appended events)."""
        state = self.state
        replies = self._decide(commands, now)
        if run_timers:
            timers.tick(state, now, self.settings.limits)
        dispatch.dispatch(state, now)
        events, sends = state.take_outbox()
        if events:
            try:
                records, seconds = await self._append(events)
            except (FencedOut, JournalError) as exc:
                error: MawexError = NotLeader(None) if isinstance(exc, FencedOut) else exc
                for future, _, _ in replies:
                    if not future.done():
                        future.set_exception(error)
                raise
        # Once the events are durable, work for workers is written at once; then the
        # waiting tasks run in the order they matter: those waiting for a task to end (a
        # client's answer), the topic and the observers (metrics, logs), the acks of
        # results that go with no work, and last the callers, who may read the topic.
        acks = self._send_work(sends)
        loop = asyncio.get_running_loop()
        if events:
            self._wake_waiters(events)
            loop.call_soon(self._committed, records, events, now, seconds)
        if acks:
            loop.call_soon(self._write, acks)
        for future, reply, failure in replies:
            if future.done():
                continue
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(reply)
        if state.offset - self._snapshot_offset >= self.settings.snapshot_every:
            await self.save_snapshot(trim_in_background=True)
        return bool(events)

    def _send_work(
        self, sends: list[tuple[str, wire.MasterMessage]]
    ) -> list[tuple[Session, wire.MasterMessage]]:
        """Write the messages for workers now, with the acks for the same workers (one
        write per worker); the other acks are returned, to be sent when nothing waits."""
        sessions = self.sessions
        work: list[tuple[Session, wire.MasterMessage]] = []
        acks: list[tuple[Session, wire.MasterMessage]] = []
        for worker_id, message in sends:
            session = sessions.get(worker_id)
            if session is not None:
                (acks if isinstance(message, wire.Ack) else work).append((session, message))
        if not work:
            return acks
        working = {session for session, _ in work}
        later: list[tuple[Session, wire.MasterMessage]] = []
        for session, ack in acks:
            (work if session in working else later).append((session, ack))
        self._write(work)
        return later

    @staticmethod
    def _write(messages: list[tuple[Session, wire.MasterMessage]]) -> None:
        """Send ``messages`` in order, written at once: one write per session."""
        for session, message in messages:
            session.send(wire.encode(message))
        for session in dict.fromkeys(session for session, _ in messages):
            session.flush()

    def _decide(
        self, commands: list[_Command], now: float
    ) -> list[tuple[asyncio.Future[Any], Any, MawexError | None]]:
        replies: list[tuple[asyncio.Future[Any], Any, MawexError | None]] = []
        for command in commands:
            try:
                reply = command.fn(self.state, now)
            except MawexError as exc:
                if command.future is not None:
                    replies.append((command.future, None, exc))
                continue
            if command.future is not None:
                replies.append((command.future, reply, None))
        return replies

    async def _append(self, events: list[ev.Event]) -> tuple[list[Record], float]:
        """Make ``events`` durable; their records and the seconds the append took."""
        records = self._records(events)
        started = time.perf_counter()
        await self.journal.append(records, self.lease.epoch if self.lease else 0)
        seconds = time.perf_counter() - started
        self.stats["appends"] += 1
        self.stats["appended_events"] += len(records)
        self.stats["append_seconds"] += seconds
        self.state.offset = records[-1].offset
        return records, seconds

    def _committed(
        self, records: list[Record], events: list[ev.Event], now: float, append_seconds: float
    ) -> None:
        """After a turn: its records on the topic, its events to the observers."""
        self.topic.publish(records)
        for observer in self.observers:
            observer(events, now, append_seconds)

    def _records(self, events: list[ev.Event]) -> list[Record]:
        state = self.state
        offset = state.offset
        topic = state.topic_next - sum(1 for e in events if ev.is_topic(e))
        records = []
        for event in events:
            offset += 1
            if ev.is_topic(event):
                records.append(Record(offset, topic, event.at, ev.encode(event)))
                topic += 1
            else:
                records.append(Record(offset, None, event.at, ev.encode(event)))
        return records

    def _wake_waiters(self, events: list[ev.Event]) -> None:
        if not self._waiters:
            return
        for event in events:
            if isinstance(event, ev.TERMINAL_CLASSES):
                for future in self._waiters.pop((event.group, event.id), ()):
                    if not future.done():
                        future.set_result(None)

    async def save_snapshot(self, *, trim_in_background: bool = False) -> None:
        """Store the state and trim the journal up to it (keeping the retained topic).

        ``trim_in_background``: the engine's own snapshots do not wait for the trim,
        which deletes in chunks between the appends (one trim at a time).
        """
        if self.lease is None:
            return
        state = self.state
        snapshot = Snapshot(state.offset, state.snapshot())
        epoch = self.lease.epoch
        await self.journal.save_snapshot(snapshot, epoch)
        self._snapshot_offset = snapshot.offset
        keep_topic = max(1, state.topic_next - self.settings.retain_topic_events)
        if not trim_in_background:
            await self.journal.trim(snapshot.offset, keep_topic, epoch)
        elif self._trim_task is None or self._trim_task.done():
            self._trim_task = asyncio.get_running_loop().create_task(
                self._trim(snapshot.offset, keep_topic, epoch), name="mawex-trim"
            )
        self.stats["snapshots"] += 1
        log.info(
            "snapshot saved",
            extra={"action": "snapshot", "offset": snapshot.offset, "tasks": len(state.tasks)},
        )

    async def _trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> None:
        try:
            deleted = await self.journal.trim(before_offset, keep_topic_from, epoch)
        except (FencedOut, JournalError) as exc:  # the next append finds out too
            log.warning("journal trim failed: %s", exc, extra={"action": "trim_failed"})
            return
        log.debug("journal trimmed", extra={"action": "trim", "records": deleted})

    def task_status(self, group: str, id: str) -> TaskStatus | None:
        record = self.state.tasks.get((group, id))
        return record.status if record else None


def _not_leading(commands: list[_Command], leader: str | None = None) -> None:
    """Fail the callers of commands that will not run, or of a turn that will not
    finish: this master no longer leads (``leader``: who does, if known)."""
    for command in commands:
        if command.future is not None and not command.future.done():
            command.future.set_exception(NotLeader(leader))


class _Inbox:
    """A FIFO of commands the loop drains a turn at a time."""

    def __init__(self) -> None:
        self._items: deque[_Command] = deque()
        self._ready = asyncio.Event()
        self._alarm: asyncio.TimerHandle | None = None

    def put(self, command: _Command) -> None:
        self._items.append(command)
        self._ready.set()

    async def wait(self, timeout: float) -> None:
        """Until a command arrives or ``timeout`` seconds pass.

        The loop waits with the same deadline (its next tick) turn after turn: one
        timer serves them all, instead of a timeout armed and cancelled per turn. A
        timer left from an earlier deadline only wakes the loop early, once.
        """
        if self._items or timeout <= 0:
            return
        if self._alarm is None:
            self._alarm = asyncio.get_running_loop().call_later(timeout, self._ring)
        await self._ready.wait()

    def _ring(self) -> None:
        self._alarm = None
        self._ready.set()

    def drain(self, limit: int) -> list[_Command]:
        items = self._items
        taken = [items.popleft() for _ in range(min(limit, len(items)))]
        if not items:
            self._ready.clear()
        return taken
