"""Retries, timeouts, cancels, expiry, lost workers, failover re-attachment, retention."""

from __future__ import annotations

from mawex.core import decide
from mawex.core.state import MasterState
from mawex.wire import worker as wire
from tests.unit.core.helpers import Harness, durable


def test_failed_attempt_is_retried_then_failed_with_every_error_kept() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t", max_attempts=2)
    h.finish("w1", ok=False)
    assert h.status("g", "t") == "running"  # retried at once on the same idle worker
    h.finish("w1", ok=False)
    record = h.state.tasks[("g", "t")]
    assert record.status.value == "failed"
    assert record.errors == ["boom", "boom"]
    assert h.topic() == [
        ("scheduled", "t", 1),
        ("retrying", "t", 1),
        ("scheduled", "t", 2),
        ("failed", "t", 2),
    ]


def test_worker_lost_mid_task_retries_after_the_grace_period() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t", max_attempts=2)
    h.state.disconnect_worker(h.state.workers["w1"], h.now)
    h.tick(1)
    assert h.status("g", "t") == "running"
    h.tick(h.limits.worker_grace_s)
    assert h.status("g", "t") == "pending"
    assert h.state.tasks[("g", "t")].errors == ["worker w1 lost (no heartbeat)"]
    assert "p1" not in h.state.occupancy


def test_worker_lost_on_last_attempt_fails_with_a_clear_error() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t")
    h.state.disconnect_worker(h.state.workers["w1"], h.now)
    h.tick(h.limits.worker_grace_s + 1)
    record = h.state.tasks[("g", "t")]
    assert record.status.value == "failed"
    assert "lost" in (record.last_error or "")


def test_reconnecting_worker_keeps_its_running_attempt() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t")
    h.state.disconnect_worker(h.state.workers["w1"], h.now)
    h.tick(1)
    h.join("w1", "g", "p1", running=("g", "t", 1))
    h.tick(h.limits.worker_grace_s * 3)
    assert h.status("g", "t") == "running"
    h.finish("w1", result=42)
    assert h.status("g", "t") == "completed"


def test_failover_replay_then_worker_reports_its_attempt() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t")
    # a new master replays the journal: no workers, the attempt is still running
    new = Harness()
    new.state = h.replayed()
    new.now = h.now + 2
    new.state.leader_since = new.now
    new.join("w1", "g", "p1", running=("g", "t", 1))
    new.tick(new.limits.worker_grace_s * 2)
    assert new.status("g", "t") == "running"
    new.finish("w1", result="ok")
    assert new.status("g", "t") == "completed"


def test_failover_orphan_attempt_is_retried_after_grace() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t", max_attempts=3)
    new = Harness()
    new.state = h.replayed()
    new.state.leader_since = new.now
    new.join("w2", "g", "p2")
    new.tick(1)
    assert new.status("g", "t") == "running"
    new.tick(new.limits.worker_grace_s)
    assert new.state.tasks[("g", "t")].attempt == 2
    assert new.assigned("w2") == [("g", "t", 2)]


def test_worker_reporting_a_stale_attempt_is_told_to_cancel_and_blocks_its_pod() -> None:
    h = Harness()
    h.submit("g", "t")
    h.join("w1", "g", "p1", running=("g", "other", 3))
    cancels = [m for w, m in h.sent if w == "w1" and isinstance(m, wire.Cancel)]
    assert [(c.id, c.attempt) for c in cancels] == [("other", 3)]
    assert h.status("g", "t") == "pending"  # its pod is busy with the stale attempt
    decide.free(h.state, h.state.workers["w1"], wire.Free(group="g", id="other", attempt=3), h.now)
    h.commit()
    assert h.status("g", "t") == "running"


def test_timeout_backstop_fails_the_attempt_and_keeps_the_pod_until_free() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.join("w2", "g", "p1")
    h.submit("g", "slow", timeout_s=2)
    h.submit("g", "next")
    h.tick(2 + h.limits.timeout_grace_s)
    assert h.status("g", "slow") == "failed"
    assert h.status("g", "next") == "pending"  # the pod is still busy with slow code
    worker = h.state.tasks[("g", "slow")].worker or ""
    assert any(isinstance(m, wire.Cancel) for w, m in h.sent if w == worker)
    decide.free(h.state, h.state.workers[worker], wire.Free(group="g", id="slow", attempt=1), h.now)
    h.commit()
    assert h.status("g", "next") == "running"


def test_worker_reported_timeout_with_busy_code() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t", max_attempts=2)
    h.finish("w1", ok=False, busy=True)
    assert h.status("g", "t") == "pending"
    assert "p1" in h.state.occupancy
    decide.free(h.state, h.state.workers["w1"], wire.Free(group="g", id="t", attempt=1), h.now)
    h.commit()
    assert h.status("g", "t") == "running"
    assert h.state.tasks[("g", "t")].attempt == 2


def test_cancel_pending_and_running() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "run")
    h.submit("g", "wait")
    decide.cancel(h.state, "g", "wait", h.now)
    decide.cancel(h.state, "g", "run", h.now)
    h.commit()
    assert h.status("g", "wait") == "cancelled"
    assert h.status("g", "run") == "cancelled"
    assert ("w1", wire.Cancel(group="g", id="run", attempt=1)) in h.sent
    # the pod stays busy until the worker confirms; then it is free
    assert "p1" in h.state.occupancy
    h.finish("w1", ok=False)
    assert "p1" not in h.state.occupancy
    assert h.status("g", "run") == "cancelled"
    assert [t[0] for t in h.topic()].count("cancelled") == 2


def test_pending_timeout_expires_task() -> None:
    h = Harness()
    h.submit("g", "t", pending_timeout_s=5)
    h.tick(4)
    assert h.status("g", "t") == "pending"
    h.tick(2)
    assert h.status("g", "t") == "expired"
    h.join("w1", "g", "p1")
    assert h.assigned("w1") == []


def test_handback_on_checkout_requeues_without_charging_an_attempt() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t")
    decide.bye(
        h.state,
        h.state.workers["w1"],
        wire.Bye(handback=wire.AttemptRef(group="g", id="t", attempt=1)),
        h.now,
    )
    h.commit()
    record = h.state.tasks[("g", "t")]
    assert record.status.value == "pending" and record.failures == 0
    h.join("w2", "g", "p2")
    h.finish("w2", result=1)
    assert h.status("g", "t") == "completed"


def test_retention_purges_oldest_terminal_tasks_and_frees_their_ids() -> None:
    h = Harness(decide.Limits(retain_results=2, retain_seconds=None))
    h.join("w1", "g", "p1")
    for i in range(4):
        h.submit("g", f"t{i}")
        h.finish("w1")
    h.tick(1)
    assert sorted(i for _, i in h.state.tasks) == ["t2", "t3"]
    assert h.submit("g", "t0") is False  # forgotten: accepted anew


def test_queue_limit_rejects_without_changing_state() -> None:
    h = Harness(decide.Limits(max_pending_per_group=2))
    h.submit("g", "a")
    h.submit("g", "b")
    before = durable(h.state)
    try:
        h.submit("g", "c")
    except Exception as exc:
        assert type(exc).__name__ == "QueueFull"
    else:
        raise AssertionError("expected QueueFull")
    assert durable(h.state) == before


def test_snapshot_round_trip() -> None:
    h = Harness()
    h.join("w1", "g", "p1")
    h.submit("g", "t0", max_attempts=3)
    h.finish("w1", ok=False)
    h.submit("g", "t1", pending_timeout_s=30)
    h.submit("h", "t2", payload={"x": [1, 2]})
    restored = MasterState.from_snapshot(h.state.snapshot())
    assert durable(restored) == durable(h.state)
    assert durable(h.replayed()) == durable(h.state)
