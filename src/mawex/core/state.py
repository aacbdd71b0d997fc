"""The master's state and how events fold into it.

Two parts live here. The durable part (tasks, pending queues, pod occupancy,
counters) changes only through :meth:`MasterState.apply` of journal events, so
replaying the journal rebuilds it exactly. The volatile part (connected workers)
describes live sessions and starts empty on every master.

Decision functions (:mod:`mawex.core.decide`, :mod:`mawex.core.dispatch`,
:mod:`mawex.core.timers`) call :meth:`MasterState.emit`, which applies an event
and queues it for the journal; the engine drains :attr:`MasterState.outbox` once
per loop turn and appends it in one transaction.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import operator
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from mawex.core import events as ev
from mawex.model import TaskStatus

Key = tuple[str, str]
"""A task's identity: ``(group, id)``."""


if TYPE_CHECKING:
    _Status = TaskStatus
else:
    # msgspec decodes a str-valued enum field at ~0.4 µs per record (a million in a
    # snapshot: 0.4 s); as a plain str it is free, and from_snapshot maps it to the
    # TaskStatus member once per record. TaskStatus is a str, so encoding is the same.
    _Status = str


class TaskRecord(msgspec.Struct, array_like=True, gc=False):
    """Everything the master knows about one task.

    A msgspec struct: snapshots encode and decode records in C (one array per
    record, fields in this order) instead of building rows in Python, and a
    record is a small object without ``__dict__``. ``gc=False``: a record refers
    to no container that could refer back to it, so it never needs the cycle
    collector (a million pending tasks are a million objects it would scan).
    """

    group: str
    id: str
    payload: bytes
    max_attempts: int
    timeout_s: float | None
    pending_deadline: float | None
    seq: int
    accepted_at: float
    status: _Status = TaskStatus.PENDING
    attempt: int = 0
    failures: int = 0
    errors: list[str] | None = None
    result: bytes | None = None
    worker: str | None = None
    pod: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def key(self) -> Key:
        return (self.group, self.id)

    @property
    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None

    def to_row(self) -> list[Any]:
        """The fields by name in :data:`_ROW_FIELDS` order (snapshot format 1)."""
        return [getattr(self, name) for name in _ROW_FIELDS]

    @classmethod
    def from_row(cls, row: list[Any], fields: tuple[str, ...] | None = None) -> TaskRecord:
        """A record from a format-1 row (``fields`` names its columns; default the current)."""
        values = dict(zip(fields or _ROW_FIELDS, row, strict=True))
        values["status"] = TaskStatus(values["status"])
        return cls(**values)


#: Format 1 of snapshots stored a record as a row of its fields sorted by name.
_ROW_FIELDS = tuple(sorted(TaskRecord.__struct_fields__))
#: Format 2 stores a record as an array of its fields in declaration order.
_STRUCT_FIELDS = TaskRecord.__struct_fields__


@dataclass(slots=True)
class Slot:
    """The attempt a pod is busy with: at most one per pod."""

    worker: str
    group: str
    id: str
    attempt: int

    def matches(self, worker: str, group: str, id: str, attempt: int) -> bool:
        return (self.worker, self.group, self.id, self.attempt) == (worker, group, id, attempt)


@dataclass(slots=True)
class WorkerInfo:
    """A worker session as the master sees it (volatile)."""

    id: str
    group: str
    pod: str
    sandbox: str
    connected: bool
    last_seen: float
    last_used: float
    joined_at: float
    task: tuple[str, str, int] | None = None
    task_since: float | None = None
    zombie: bool = False
    disconnected_at: float | None = None


class PendingQueue:
    """A group's pending tasks in acceptance order, with lazy deletion.

    Tasks mostly arrive in order: those come in ``backlog`` (the records themselves,
    read from ``start``), and only a task that comes back behind newer ones (a retry
    keeps its ``seq``) goes to ``heap``. A million pending tasks are then a list of a
    million references, not a million ``(seq, id)`` tuples.
    """

    __slots__ = ("backlog", "heap", "size", "start")

    def __init__(self) -> None:
        self.backlog: list[TaskRecord] = []
        self.start = 0
        self.heap: list[tuple[int, str]] = []
        self.size = 0

    def push(self, record: TaskRecord) -> None:
        backlog = self.backlog
        if self.start == len(backlog) or backlog[-1].seq < record.seq:
            backlog.append(record)
        else:
            heapq.heappush(self.heap, (record.seq, record.id))

    def clear(self) -> None:
        """Drop every entry: for a queue with no pending task left, all are stale (and
        would keep finished records alive until a worker of the group came)."""
        self.backlog.clear()
        self.heap.clear()
        self.start = 0

    def head(self, group: str, tasks: dict[Key, TaskRecord]) -> TaskRecord | None:
        """The oldest pending task, dropping entries that are no longer pending."""
        pending = TaskStatus.PENDING
        backlog, start = self.backlog, self.start
        first: TaskRecord | None = None
        while start < len(backlog):
            record = backlog[start]
            if record.status is pending and tasks.get((group, record.id)) is record:
                first = record
                break
            start += 1
        if start > BACKLOG_COMPACT and start * 2 > len(backlog):
            del backlog[:start]
            start = 0
        self.start = start
        heap = self.heap
        while heap:
            seq, id = heap[0]
            retried = tasks.get((group, id))
            if retried is not None and retried.seq == seq and retried.status is pending:
                return retried if first is None or seq < first.seq else first
            heapq.heappop(heap)
        return first


class IdleWorkers:
    """A group's idle workers, least recently used first (a heap with lazy deletion).

    Finding the next worker costs the stale and passed-over entries it pops, not a
    scan of every idle worker: dispatch stays cheap with a thousand of them.
    """

    __slots__ = ("heap", "since")

    def __init__(self) -> None:
        self.heap: list[tuple[float, str]] = []
        #: Idle worker id -> its ``last_used`` when it went idle (its live heap entry).
        self.since: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.since)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self.since

    def __iter__(self) -> Iterator[str]:
        return iter(self.since)

    def add(self, worker: WorkerInfo) -> None:
        if self.since.get(worker.id) == worker.last_used:
            return
        self.since[worker.id] = worker.last_used
        heapq.heappush(self.heap, (worker.last_used, worker.id))
        if len(self.heap) > 2 * len(self.since) + 64:  # mostly stale entries: rebuild
            self.heap = sorted((used, id) for id, used in self.since.items())

    def discard(self, worker_id: str) -> None:
        self.since.pop(worker_id, None)

    def least_recently_used(self, usable: Callable[[str], bool]) -> str | None:
        """The idle worker with the oldest ``(last_used, id)`` that is ``usable``."""
        heap, since = self.heap, self.since
        passed_over: list[tuple[float, str]] = []
        found = None
        while heap:
            used, worker_id = heap[0]
            if since.get(worker_id) != used:
                heapq.heappop(heap)  # no longer idle, or idle again since
            elif usable(worker_id):
                found = worker_id
                break
            else:
                passed_over.append(heapq.heappop(heap))
        for entry in passed_over:
            heapq.heappush(heap, entry)
        return found


@dataclass(slots=True)
class Counts:
    """Lifetime counters, by event type."""

    accepted: int = 0
    scheduled: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    requeued: int = 0
    cancelled: int = 0
    expired: int = 0
    purged: int = 0


@dataclass
class MasterState:
    """Durable state (folded from events) plus live worker sessions."""

    tasks: dict[Key, TaskRecord] = field(default_factory=dict)
    queues: dict[str, PendingQueue] = field(default_factory=dict)
    running: Counter[str] = field(default_factory=Counter)
    occupancy: dict[str, Slot] = field(default_factory=dict)
    finished: deque[tuple[float, str, str]] = field(default_factory=deque)
    expiries: list[tuple[float, int, str, str]] = field(default_factory=list)
    seq: int = 0
    offset: int = 0
    topic_next: int = 1
    counts: Counts = field(default_factory=Counts)
    counts_by_group: dict[str, Counter[str]] = field(default_factory=dict)
    #: Interned group names (see :meth:`intern`): not state, a memory saving.
    names: dict[str, str] = field(default_factory=dict)
    # volatile
    workers: dict[str, WorkerInfo] = field(default_factory=dict)
    idle: dict[str, IdleWorkers] = field(default_factory=dict)
    zombie_pods: Counter[str] = field(default_factory=Counter)
    leader_since: float = 0.0
    outbox: list[ev.Event] = field(default_factory=list)
    sends: list[tuple[str, Any]] = field(default_factory=list)

    # -- queries --------------------------------------------------------------

    def pending_count(self, group: str) -> int:
        queue = self.queues.get(group)
        return queue.size if queue else 0

    def pod_busy(self, pod: str) -> bool:
        return pod in self.occupancy or self.zombie_pods[pod] > 0

    def groups(self) -> set[str]:
        names = {g for g, q in self.queues.items() if q.size}
        names.update(g for g, n in self.running.items() if n)
        names.update(w.group for w in self.workers.values())
        return names

    # -- events ---------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        """Apply a new event and queue it for the journal."""
        self.apply(event)
        self.outbox.append(event)

    def send(self, worker: str, message: Any) -> None:
        """Queue a message for a worker, to go out once this turn's events are durable."""
        self.sends.append((worker, message))

    def take_outbox(self) -> tuple[list[ev.Event], list[tuple[str, Any]]]:
        events, sends = self.outbox, self.sends
        self.outbox, self.sends = [], []
        return events, sends

    def apply(self, event: ev.Event) -> None:
        """Fold one event into the state (replay and live use the same path)."""
        handler = _HANDLERS[type(event)]
        handler(self, event)
        if ev.is_topic(event):
            self.topic_next += 1

    def _count(self, group: str, name: str) -> None:
        setattr(self.counts, name, getattr(self.counts, name) + 1)
        by_group = self.counts_by_group.get(group)
        if by_group is None:
            by_group = self.counts_by_group[group] = Counter()
        by_group[name] += 1

    def _enqueue(self, record: TaskRecord) -> None:
        queue = self.queues.get(record.group)
        if queue is None:
            queue = self.queues[record.group] = PendingQueue()
        queue.push(record)
        queue.size += 1
        record.status = TaskStatus.PENDING

    def _leave_pending(self, record: TaskRecord) -> None:
        queue = self.queues[record.group]
        queue.size -= 1
        if not queue.size:
            queue.clear()

    def _leave_running(self, record: TaskRecord) -> None:
        self.running[record.group] -= 1

    def _finish(self, record: TaskRecord, status: TaskStatus, at: float) -> None:
        record.status = status
        record.finished_at = at
        self.finished.append((at, record.group, record.id))

    def _release(self, pod: str | None, group: str, id: str, attempt: int, at: float) -> None:
        if pod is None:
            return
        slot = self.occupancy.get(pod)
        if slot is None or (slot.group, slot.id, slot.attempt) != (group, id, attempt):
            return
        del self.occupancy[pod]
        worker = self.workers.get(slot.worker)
        if worker is not None and worker.task == (group, id, attempt):
            self.set_worker_idle(worker, at)

    def _fail_attempt(self, record: TaskRecord, error: str) -> None:
        record.failures += 1
        if record.errors is None:
            record.errors = []
        record.errors.append(error)

    # -- volatile worker bookkeeping ----------------------------------------

    def set_worker_idle(self, worker: WorkerInfo, at: float) -> None:
        if worker.zombie and worker.task is not None:
            self.zombie_pods[worker.pod] -= 1
        worker.task = None
        worker.task_since = None
        worker.zombie = False
        worker.last_used = at
        if worker.connected:
            self._idle_of(worker.group).add(worker)

    def set_worker_task(
        self, worker: WorkerInfo, task: tuple[str, str, int], at: float, zombie: bool = False
    ) -> None:
        if worker.zombie and worker.task is not None:
            self.zombie_pods[worker.pod] -= 1
        worker.task = task
        worker.task_since = at
        worker.zombie = zombie
        if zombie:
            self.zombie_pods[worker.pod] += 1
        idle = self.idle.get(worker.group)
        if idle is not None:
            idle.discard(worker.id)

    def add_worker(self, worker: WorkerInfo) -> None:
        self.workers[worker.id] = worker
        if worker.task is None and worker.connected:
            self._idle_of(worker.group).add(worker)

    def _idle_of(self, group: str) -> IdleWorkers:
        idle = self.idle.get(group)
        if idle is None:
            idle = self.idle[group] = IdleWorkers()
        return idle

    def disconnect_worker(self, worker: WorkerInfo, at: float) -> None:
        worker.connected = False
        worker.disconnected_at = at
        idle = self.idle.get(worker.group)
        if idle is not None:
            idle.discard(worker.id)

    def remove_worker(self, worker_id: str) -> WorkerInfo | None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return None
        idle = self.idle.get(worker.group)
        if idle is not None:
            idle.discard(worker.id)
        if worker.zombie and worker.task is not None:
            self.zombie_pods[worker.pod] -= 1
        return worker

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The durable state as bytes (volatile sessions are not included).

        Format 2: msgpack, every task record an array of its fields (encoded in C;
        format 1 built a Python row per task, ~10x slower). Tasks go in ``tasks``
        order, which is acceptance (``seq``) order.
        """
        body = _SnapshotV2(
            v=2,
            fields=list(_STRUCT_FIELDS),
            tasks=list(self.tasks.values()),
            occupancy=[(p, s.worker, s.group, s.id, s.attempt) for p, s in self.occupancy.items()],
            finished=list(self.finished),
            seq=self.seq,
            offset=self.offset,
            topic_next=self.topic_next,
            counts=_counts_dict(self.counts),
            counts_by_group={g: dict(c) for g, c in self.counts_by_group.items()},
        )
        return _SNAPSHOT_ENCODER.encode(body)

    @classmethod
    def from_snapshot(cls, data: bytes) -> MasterState:
        """The state a snapshot holds; reads format 2 and the older format 1."""
        # Format 2 starts with its version: no need to walk a big snapshot to read it.
        version = 2 if data.startswith(_V2_PREFIX) else _VERSION_DECODER.decode(data).v
        # Building a million records and their keys would run the cycle collector
        # over a growing heap again and again (a third of the time): nothing here
        # can form a cycle, so it waits until the state is built.
        with collector_paused():
            return cls._from_snapshot(data, version)

    @classmethod
    def _from_snapshot(cls, data: bytes, version: int) -> MasterState:
        state = cls()
        if version == 2:
            body = _SNAPSHOT_DECODER.decode(data)
            if tuple(body.fields) != _STRUCT_FIELDS:
                raise ValueError("unsupported snapshot format: the task fields differ")
            records = body.tasks
            occupancy: list[Any] = body.occupancy
            finished: list[Any] = body.finished
            seq, offset, topic_next = body.seq, body.offset, body.topic_next
            counts, counts_by_group = body.counts, body.counts_by_group
        elif version == 1:
            raw = msgspec.msgpack.decode(data)
            fields = tuple(raw["fields"])
            if set(fields) != set(_ROW_FIELDS):
                raise ValueError("unsupported snapshot format: the task fields differ")
            records = [TaskRecord.from_row(row, fields) for row in raw["tasks"]]
            occupancy, finished = raw["occupancy"], raw["finished"]
            seq, offset, topic_next = raw["seq"], raw["offset"], raw["topic_next"]
            counts, counts_by_group = raw["counts"], raw["counts_by_group"]
        else:
            raise ValueError(f"unsupported snapshot format {version!r}")
        state._index(records)
        for pod, worker, group, id, attempt in occupancy:
            state.occupancy[pod] = Slot(worker, group, id, attempt)
        state.finished = deque((at, g, i) for at, g, i in finished)
        state.seq = seq
        state.offset = offset
        state.topic_next = topic_next
        state.counts = Counts(**counts)
        state.counts_by_group = {g: Counter(c) for g, c in counts_by_group.items()}
        return state

    def _index(self, records: list[TaskRecord]) -> None:
        """Fill ``tasks``, the pending queues, ``running`` and ``expiries`` of a fresh state."""
        records.sort(key=_BY_SEQ)  # already in seq order when saved by snapshot(): one pass
        tasks, queues, running, expiries = self.tasks, self.queues, self.running, self.expiries
        names, intern = self.names, self.intern
        pending, is_running = TaskStatus.PENDING, TaskStatus.RUNNING
        for record in records:
            # intern's own first look, inline: a call saved per record
            group = record.group = names.get(record.group) or intern(record.group)
            tasks[(group, record.id)] = record
            status = record.status = _STATUSES[record.status]
            if status is pending:
                queue = queues.get(group)
                if queue is None:
                    queue = queues[group] = PendingQueue()
                queue.backlog.append(record)  # in ascending seq
                queue.size += 1
                if record.pending_deadline is not None:
                    expiries.append((record.pending_deadline, record.seq, group, record.id))
            elif status is is_running:
                running[group] += 1
        heapq.heapify(expiries)

    def intern(self, name: str) -> str:
        """One string object per group name, shared by its tasks (up to MAX_INTERNED names)."""
        names = self.names
        shared = names.get(name)
        if shared is not None:
            return shared
        if len(names) < MAX_INTERNED:
            names[name] = name
        return name


@contextlib.contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """Python's cycle collector off inside (as it was again after), for building a state.

    A state's records, keys and queues cannot form cycles, but building millions of
    them runs the collector over the growing heap again and again (a third to a half
    of a snapshot load or a replay). ``freeze``: on success, move everything alive
    out of the collector's generations (``gc.freeze``), so no later full collection
    scans the state either; frozen objects are still freed by reference counting.
    It acts on the whole process: for a process that runs only the master.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if collecting:
            gc.enable()


class _Version(msgspec.Struct):
    v: int


class _SnapshotV2(msgspec.Struct):
    v: int
    fields: list[str]
    tasks: list[TaskRecord]
    occupancy: list[tuple[str, str, str, str, int]]
    finished: list[tuple[float, str, str]]
    seq: int
    offset: int
    topic_next: int
    counts: dict[str, int]
    counts_by_group: dict[str, dict[str, int]]


_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(_SnapshotV2)
_VERSION_DECODER = msgspec.msgpack.Decoder(_Version)
#: How a format-2 snapshot begins: the msgpack header of a map of its fields, then
#: ``v`` (the first field) and 2.
_V2_PREFIX = (
    bytes([0x80 | len(_SnapshotV2.__struct_fields__)]) + _SNAPSHOT_ENCODER.encode({"v": 2})[1:]
)
_BY_SEQ = operator.attrgetter("seq")
_STATUSES: dict[str, TaskStatus] = {status.value: status for status in TaskStatus}
#: Entries a pending queue's backlog drops from its front at once, at least.
BACKLOG_COMPACT = 1024
#: Group names interned per state; more distinct names than this are simply not shared.
MAX_INTERNED = 10_000


def _counts_dict(counts: Counts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in Counts.__dataclass_fields__}


# -- event handlers ---------------------------------------------------------------


def _accepted(state: MasterState, e: ev.Accepted) -> None:
    state.seq += 1
    deadline = e.at + e.pending_timeout_s if e.pending_timeout_s else None
    record = TaskRecord(
        state.intern(e.group),
        e.id,
        bytes(e.payload),
        e.max_attempts,
        e.timeout_s,
        deadline,
        state.seq,
        e.at,
    )
    state.tasks[record.key] = record
    state._enqueue(record)
    if deadline is not None:
        heapq.heappush(state.expiries, (deadline, record.seq, record.group, record.id))
    state._count(e.group, "accepted")


def _scheduled(state: MasterState, e: ev.Scheduled) -> None:
    record = state.tasks[(e.group, e.id)]
    state._leave_pending(record)
    record.status = TaskStatus.RUNNING
    record.attempt = e.attempt
    record.worker = e.worker
    record.pod = e.pod
    record.started_at = e.at
    state.running[e.group] += 1
    state.occupancy[e.pod] = Slot(e.worker, e.group, e.id, e.attempt)
    worker = state.workers.get(e.worker)
    if worker is not None:
        state.set_worker_task(worker, (e.group, e.id, e.attempt), e.at)
    state._count(e.group, "scheduled")


def _retrying(state: MasterState, e: ev.Retrying) -> None:
    record = state.tasks[(e.group, e.id)]
    pod = record.pod
    state._leave_running(record)
    state._fail_attempt(record, e.error)
    state._enqueue(record)
    if e.release:
        state._release(pod, e.group, e.id, e.attempt, e.at)
    state._count(e.group, "retried")


def _completed(state: MasterState, e: ev.Completed) -> None:
    record = state.tasks[(e.group, e.id)]
    state._leave_running(record)
    record.result = bytes(e.result)
    state._finish(record, TaskStatus.COMPLETED, e.at)
    state._release(record.pod, e.group, e.id, e.attempt, e.at)
    state._count(e.group, "completed")


def _failed(state: MasterState, e: ev.Failed) -> None:
    record = state.tasks[(e.group, e.id)]
    if record.status is TaskStatus.RUNNING:
        state._leave_running(record)
    else:
        state._leave_pending(record)
    state._fail_attempt(record, e.error)
    state._finish(record, TaskStatus.FAILED, e.at)
    if e.release:
        state._release(record.pod, e.group, e.id, e.attempt, e.at)
    state._count(e.group, "failed")


def _cancelled(state: MasterState, e: ev.Cancelled) -> None:
    record = state.tasks[(e.group, e.id)]
    if record.status is TaskStatus.RUNNING:
        state._leave_running(record)
    else:
        state._leave_pending(record)
    state._finish(record, TaskStatus.CANCELLED, e.at)
    state._count(e.group, "cancelled")


def _expired(state: MasterState, e: ev.Expired) -> None:
    record = state.tasks[(e.group, e.id)]
    state._leave_pending(record)
    state._finish(record, TaskStatus.EXPIRED, e.at)
    state._count(e.group, "expired")


def _requeued(state: MasterState, e: ev.Requeued) -> None:
    record = state.tasks[(e.group, e.id)]
    pod = record.pod
    state._leave_running(record)
    state._enqueue(record)
    state._release(pod, e.group, e.id, e.attempt, e.at)
    state._count(e.group, "requeued")


def _released(state: MasterState, e: ev.Released) -> None:
    state._release(e.pod, e.group, e.id, e.attempt, e.at)


def _purged(state: MasterState, e: ev.Purged) -> None:
    for group, id in e.keys:
        record = state.tasks.get((group, id))
        if record is not None and record.status.terminal:
            del state.tasks[(group, id)]
            state._count(group, "purged")
    purged = set(e.keys)
    while state.finished and (state.finished[0][1], state.finished[0][2]) in purged:
        state.finished.popleft()


_HANDLERS: dict[type, Any] = {
    ev.Accepted: _accepted,
    ev.Scheduled: _scheduled,
    ev.Retrying: _retrying,
    ev.Completed: _completed,
    ev.Failed: _failed,
    ev.Cancelled: _cancelled,
    ev.Expired: _expired,
    ev.Requeued: _requeued,
    ev.Released: _released,
    ev.Purged: _purged,
}
