"""Prometheus metrics, read from the engine at scrape time (no double bookkeeping)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from mawex.master.engine import Engine

_TASK_COUNTERS = {
    "accepted": "Tasks accepted",
    "scheduled": "Attempts dispatched to a worker",
    "completed": "Tasks completed",
    "failed": "Tasks failed after their last attempt",
    "retried": "Attempts that failed and were retried",
    "requeued": "Attempts handed back by a worker on check-out",
    "cancelled": "Tasks cancelled",
    "expired": "Tasks expired while pending",
}


class EngineCollector(Collector):
    """Exposes one engine's state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        state = engine.state
        for name, help_text in _TASK_COUNTERS.items():
            family = CounterMetricFamily(f"mawex_tasks_{name}", help_text, labels=["group"])
            for group, counts in sorted(state.counts_by_group.items()):
                family.add_metric([group], counts[name])
            yield family
        pending = GaugeMetricFamily("mawex_tasks_pending", "Pending tasks", labels=["group"])
        running = GaugeMetricFamily("mawex_tasks_running", "Running tasks", labels=["group"])
        for group in sorted(state.groups()):
            pending.add_metric([group], state.pending_count(group))
            running.add_metric([group], state.running[group])
        yield pending
        yield running
        workers = GaugeMetricFamily(
            "mawex_workers", "Connected workers", labels=["group", "pod", "status"]
        )
        tally: dict[tuple[str, str, str], int] = {}
        for w in state.workers.values():
            status = "disconnected" if not w.connected else ("busy" if w.task else "idle")
            tally[(w.group, w.pod, status)] = tally.get((w.group, w.pod, status), 0) + 1
        for labels, count in sorted(tally.items()):
            workers.add_metric(list(labels), count)
        yield workers
        yield GaugeMetricFamily("mawex_leader", "1 on the leader", value=int(engine.is_leader))
        yield GaugeMetricFamily("mawex_epoch", "Leader epoch this master knows", value=engine.epoch)
        yield GaugeMetricFamily(
            "mawex_journal_offset", "Last applied journal offset", value=state.offset
        )
        stats = engine.stats
        yield CounterMetricFamily(
            "mawex_journal_appends", "Journal append transactions", value=stats["appends"]
        )
        yield CounterMetricFamily(
            "mawex_journal_appended_events", "Events appended", value=stats["appended_events"]
        )
        yield CounterMetricFamily(
            "mawex_journal_append_seconds", "Time spent appending", value=stats["append_seconds"]
        )
        yield CounterMetricFamily(
            "mawex_lease_renewals", "Lease renewals", value=stats["lease_renewals"]
        )
        yield CounterMetricFamily(
            "mawex_leader_elections", "Times this master became leader", value=stats["failovers"]
        )
        yield CounterMetricFamily("mawex_snapshots", "Snapshots saved", value=stats["snapshots"])


def render(engine: Engine) -> tuple[bytes, str]:
    """The metrics page and its content type."""
    registry = getattr(engine, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(EngineCollector(engine))
        engine._metrics_registry = registry  # type: ignore[attr-defined]
    return generate_latest(registry), CONTENT_TYPE_LATEST
