"""Read models: what the HTTP API shows of the state."""

from __future__ import annotations

from typing import Any

import msgspec

from mawex.core.state import MasterState, TaskRecord


def task_view(record: TaskRecord) -> dict[str, Any]:
    """The body of ``GET /v1/tasks/{group}/{id}``."""
    body: dict[str, Any] = {
        "id": record.id,
        "group": record.group,
        "status": record.status.value,
        "attempt": record.attempt,
    }
    if record.result is not None:
        body["result"] = msgspec.Raw(record.result)
    if record.errors:
        body["error"] = record.errors[-1]
        body["errors"] = list(record.errors)
    return body


def state_view(state: MasterState, now: float) -> dict[str, Any]:
    """The task-related part of ``GET /v1/state`` (the engine adds leadership)."""
    groups = {
        group: {"pending": state.pending_count(group), "running": state.running[group]}
        for group in sorted(state.groups())
    }
    pods: dict[str, dict[str, Any]] = {}
    for worker in state.workers.values():
        pods.setdefault(worker.pod, {"busy": False, "workers": 0})["workers"] += 1
    for pod in state.occupancy:
        pods.setdefault(pod, {"busy": True, "workers": 0})
    for pod, info in pods.items():
        info["busy"] = state.pod_busy(pod)
        slot = state.occupancy.get(pod)
        if slot is not None:
            info["task"] = {"group": slot.group, "id": slot.id, "attempt": slot.attempt}
    workers = [
        {
            "id": w.id,
            "group": w.group,
            "pod": w.pod,
            "sandbox": w.sandbox,
            "status": _worker_status(w),
            "task": (
                {"group": w.task[0], "id": w.task[1], "attempt": w.task[2]} if w.task else None
            ),
            "busy_for_s": round(now - w.task_since, 3) if w.task_since is not None else None,
        }
        for w in sorted(state.workers.values(), key=lambda w: (w.pod, w.group, w.id))
    ]
    counts = {name: getattr(state.counts, name) for name in type(state.counts).__dataclass_fields__}
    counts["pending"] = sum(q.size for q in state.queues.values())
    counts["running"] = sum(state.running.values())
    counts["retained"] = len(state.tasks)
    return {
        "groups": groups,
        "pods": dict(sorted(pods.items())),
        "workers": workers,
        "counts": counts,
    }


def _worker_status(worker: Any) -> str:
    if not worker.connected:
        return "disconnected"
    if worker.task is None:
        return "idle"
    return "draining" if worker.zombie else "busy"
