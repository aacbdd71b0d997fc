"""The worker side: one :class:`Worker` per consumer group, a :class:`WorkerPool` per pod."""

from __future__ import annotations

from mawex.worker.runner import (
    Worker,
    WorkerPool,
    WorkerState,
    build_workers,
    make_worker_id,
    parse_masters,
    run_workers,
    worker_ws_url,
)

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
