"""Snapshot formats: format 2 (records as msgspec arrays) and the older format 1 still loads."""

from __future__ import annotations

import gc
from collections import deque
from typing import Any

import msgspec
import pytest

from mawex.core.state import _ROW_FIELDS, _V2_PREFIX, MasterState, TaskRecord
from mawex.model import TaskStatus
from tests.unit.core.helpers import Harness, durable


def _busy_harness() -> Harness:
    """Pending (with and without an expiry), running, retried, finished tasks in two groups."""
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t0", max_attempts=3)
    h.finish("w1", ok=False)  # t0 retried, running again
    h.submit("g", "t1", pending_timeout_s=30)
    h.submit("h", "t2", payload={"x": [1, 2]})
    h.submit("g", "t3")
    h.submit("g", "t4", pending_timeout_s=60)
    h.finish("w1", ok=True)  # t0 completed, t1 starts
    return h


def _format_1(state: MasterState) -> bytes:
    """What ``MasterState.snapshot`` wrote before format 2."""
    return msgspec.msgpack.encode(
        {
            "v": 1,
            "fields": list(_ROW_FIELDS),
            "tasks": [r.to_row() for r in state.tasks.values()],
            "occupancy": [
                [p, s.worker, s.group, s.id, s.attempt] for p, s in state.occupancy.items()
            ],
            "finished": list(state.finished),
            "seq": state.seq,
            "offset": state.offset,
            "topic_next": state.topic_next,
            "counts": {
                name: getattr(state.counts, name)
                for name in type(state.counts).__dataclass_fields__
            },
            "counts_by_group": {g: dict(c) for g, c in state.counts_by_group.items()},
        }
    )


def _check_restored(restored: MasterState, live: MasterState) -> None:
    assert durable(restored) == durable(live)
    live_expiries = [  # the live heap also keeps stale entries (lazy deletion)
        e for e in live.expiries if live.tasks[(e[2], e[3])].status is TaskStatus.PENDING
    ]
    assert restored.expiries == sorted(live_expiries)
    assert restored.finished == deque(live.finished)
    assert restored.counts == live.counts
    assert restored.counts_by_group == live.counts_by_group
    for key, record in restored.tasks.items():
        assert type(record.status) is TaskStatus
        assert record.status is live.tasks[key].status
        assert type(record.payload) is bytes
    # the queues serve the same heads in the same order
    for group in live.queues:
        live_head = live.queues[group].head(group, live.tasks)
        head = restored.queues[group].head(group, restored.tasks)
        assert (head and head.key) == (live_head and live_head.key)


@pytest.mark.parametrize("encode", [MasterState.snapshot, _format_1], ids=["v2", "v1"])
def test_both_formats_restore_the_state(encode: Any) -> None:
    h = _busy_harness()
    restored = MasterState.from_snapshot(encode(h.state))
    _check_restored(restored, h.state)


def test_format_2_is_versioned_and_refuses_unknown_versions() -> None:
    state = _busy_harness().state
    assert msgspec.msgpack.decode(state.snapshot())["v"] == 2
    # read without decoding the whole snapshot first; format 1 does not begin so
    assert state.snapshot().startswith(_V2_PREFIX)
    assert not _format_1(state).startswith(_V2_PREFIX)
    with pytest.raises(ValueError, match="unsupported snapshot format"):
        MasterState.from_snapshot(msgspec.msgpack.encode({"v": 3}))
    with pytest.raises(ValueError, match="task fields differ"):
        MasterState.from_snapshot(msgspec.msgpack.encode({"v": 1, "fields": ["id"], "tasks": []}))


def test_loading_leaves_the_cycle_collector_as_it_was() -> None:
    data = _busy_harness().state.snapshot()
    assert gc.isenabled()
    MasterState.from_snapshot(data)
    assert gc.isenabled()
    gc.disable()
    try:
        MasterState.from_snapshot(data)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_group_names_are_shared_by_their_tasks() -> None:
    h = Harness()
    for i in range(3):
        h.submit("".join(["gr", "oup"]), f"t{i}")  # a fresh str object each time
    groups = {id(r.group) for r in h.state.tasks.values()}
    assert len(groups) == 1
    restored = MasterState.from_snapshot(h.state.snapshot())
    (shared,) = {id(r.group) for r in restored.tasks.values()}
    assert {id(group) for group, _ in restored.tasks} == {shared}  # the dict's keys too
    # names met after the restore are shared with the restored tasks
    assert id(restored.intern("".join(["gr", "oup"]))) == shared


def test_record_rows_round_trip() -> None:
    record = TaskRecord("g", "t", b"null", 2, 1.5, None, 7, 100.0)
    record.errors = ["boom"]
    again = TaskRecord.from_row(record.to_row())
    assert again == record
    assert again.status is TaskStatus.PENDING
