"""Prometheus metrics of one master.

Two sources, no double bookkeeping:

- counters and gauges are read from the engine state at scrape time
  (:class:`EngineCollector`): the per-group counts are folded from journal events,
  so they survive restarts and failovers and agree on every master;
- latency and batch-size histograms are fed by an engine observer
  (:meth:`EngineMetrics.observe`), called once after each journal commit with the
  events it made durable. Only a leader commits, so histograms describe the time
  this process has been leading.

Names follow Prometheus conventions: ``mawex_…_total`` counters, ``_seconds``
durations. See ``docs/operations.md`` for the full list.
"""

from __future__ import annotations

import logging
import math
import weakref
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from mawex.core import events as ev
from mawex.master.engine import Engine

log = logging.getLogger("mawex.metrics")

#: ``mawex_tasks_<name>_total`` counters: metric name → (state counter, help).
TASK_COUNTERS: dict[str, tuple[str, str]] = {
    "accepted": ("accepted", "Tasks accepted (duplicates are not counted)"),
    "started": ("scheduled", "Attempts dispatched to a worker (scheduled events)"),
    "completed": ("completed", "Tasks completed with a result"),
    "failed": ("failed", "Tasks failed after their last attempt"),
    "retried": ("retried", "Attempts that failed and were retried"),
    "requeued": ("requeued", "Attempts handed back unfinished by a worker checking out"),
    "cancelled": ("cancelled", "Tasks cancelled"),
    "expired": ("expired", "Tasks expired while pending"),
}

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
APPEND_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

_TERMINAL_TYPES = (ev.Completed, ev.Failed, ev.Cancelled, ev.Expired)
_PENDING_AGAIN = (ev.Retrying, ev.Requeued)
_TERMINAL: dict[type, str] = {
    ev.Completed: "completed",
    ev.Failed: "failed",
    ev.Cancelled: "cancelled",
    ev.Expired: "expired",
}


class EngineCollector(Collector):
    """Counters and gauges read from one engine's state at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        yield from self._tasks()
        yield from self._workers()
        yield from self._master()

    def _tasks(self) -> Iterator[Metric]:
        state = self.engine.state
        by_group = sorted(state.counts_by_group.items())
        for name, (counter, help_text) in TASK_COUNTERS.items():
            family = CounterMetricFamily(f"mawex_tasks_{name}", help_text, labels=["group"])
            for group, counts in by_group:
                family.add_metric([group], counts[counter])
            yield family
        pending = GaugeMetricFamily(
            "mawex_tasks_pending", "Tasks waiting for a worker", labels=["group"]
        )
        running = GaugeMetricFamily(
            "mawex_tasks_running", "Tasks running on a worker", labels=["group"]
        )
        groups = state.groups() | set(state.counts_by_group)
        for group in sorted(groups):
            pending.add_metric([group], state.pending_count(group))
            running.add_metric([group], state.running[group])
        yield pending
        yield running
        yield GaugeMetricFamily(
            "mawex_tasks_retained",
            "Tasks the master remembers (pending, running and finished within retention)",
            value=len(state.tasks),
        )

    def _workers(self) -> Iterator[Metric]:
        state = self.engine.state
        workers = GaugeMetricFamily(
            "mawex_workers",
            "Workers known to this master, by status (idle, busy, draining, disconnected)",
            labels=["group", "pod", "status"],
        )
        tally: dict[tuple[str, str, str], int] = {}
        pods: set[str] = set(state.occupancy)
        for w in state.workers.values():
            pods.add(w.pod)
            if not w.connected:
                status = "disconnected"
            elif w.task is None:
                status = "idle"
            else:
                status = "draining" if w.zombie else "busy"
            tally[(w.group, w.pod, status)] = tally.get((w.group, w.pod, status), 0) + 1
        for labels, count in sorted(tally.items()):
            workers.add_metric(list(labels), count)
        yield workers
        busy = GaugeMetricFamily("mawex_pod_busy", "1 while a task runs in the pod", labels=["pod"])
        for pod in sorted(pods):
            busy.add_metric([pod], int(state.pod_busy(pod)))
        yield busy

    def _master(self) -> Iterator[Metric]:
        engine = self.engine
        stats = engine.stats
        info = GaugeMetricFamily(
            "mawex_master_info", "This master's identity", labels=["master_id", "role"]
        )
        info.add_metric([engine.settings.master_id, engine.role], 1)
        yield info
        yield GaugeMetricFamily(
            "mawex_leader", "1 on the leader, 0 on a standby", value=int(engine.is_leader)
        )
        yield GaugeMetricFamily(
            "mawex_epoch", "Leader epoch (fencing token) this master knows", value=engine.epoch
        )
        yield GaugeMetricFamily(
            "mawex_journal_offset", "Last journal offset applied", value=engine.state.offset
        )
        yield GaugeMetricFamily(
            "mawex_topic_next_offset",
            "Offset the next result-topic event will get",
            value=engine.state.topic_next,
        )
        yield GaugeMetricFamily(
            "mawex_topic_waiters",
            "Result-topic readers waiting for new events",
            value=engine.topic.subscribers,
        )
        yield CounterMetricFamily(
            "mawex_journal_appends", "Journal append transactions", value=stats["appends"]
        )
        yield CounterMetricFamily(
            "mawex_journal_appended_events", "Events appended", value=stats["appended_events"]
        )
        yield CounterMetricFamily(
            "mawex_journal_append_seconds",
            "Time spent appending to the journal",
            value=stats["append_seconds"],
        )
        yield CounterMetricFamily(
            "mawex_lease_renewals", "Leader lease renewals", value=stats["lease_renewals"]
        )
        yield CounterMetricFamily(
            "mawex_failovers",
            "Times this master took the leader lease (its first election counts too)",
            value=stats["failovers"],
        )
        yield CounterMetricFamily("mawex_snapshots", "Snapshots saved", value=stats["snapshots"])
        busy_poll = engine.busy_poll
        yield CounterMetricFamily(
            "mawex_busy_poll_seconds",
            "Time the event loop spent polling instead of sleeping (--busy-poll)",
            value=busy_poll.seconds if busy_poll is not None else 0.0,
        )


class LoopHistogram:
    """A histogram owned by the engine's event loop: no locks, one bisect per sample.

    prometheus_client's ``Histogram`` takes a lock and validates labels on every
    ``observe`` (several microseconds); the engine loop observes twice per task,
    so this keeps the samples in plain lists and builds the metric family only when
    scraped (scrapes run on the same loop, so nothing races).
    """

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = labels
        self.buckets = buckets
        #: label values → [count per bucket (+Inf last)..., sum]
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.label_names))
        for labels, series in sorted(self.series.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self.buckets, math.inf), series[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
            family.add_metric(list(labels), buckets, series[-1])
        return family


class EngineMetrics(Collector):
    """The registry of one master: collector, histograms, and the observer feeding them."""

    def __init__(self, engine: Engine, *, process: bool = True) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(engine))
        if process:
            ProcessCollector(registry=self.registry)
        self.dispatch_latency = LoopHistogram(
            "mawex_dispatch_latency_seconds",
            "Time a task waited to be dispatched: accepted (or requeued, retried) → scheduled",
            ("group",),
            LATENCY_BUCKETS,
        )
        self.end_to_end_latency = LoopHistogram(
            "mawex_end_to_end_latency_seconds",
            "Time from acceptance to the terminal result",
            ("group", "status"),
            LATENCY_BUCKETS,
        )
        self.append_latency = LoopHistogram(
            "mawex_journal_append_duration_seconds",
            "Duration of one journal append transaction (group commit)",
            (),
            APPEND_BUCKETS,
        )
        self.batch_size = LoopHistogram(
            "mawex_journal_append_batch_events",
            "Events per journal append transaction",
            (),
            BATCH_BUCKETS,
        )
        self.registry.register(self)
        # when a retried or requeued task became pending again (first attempts use accepted_at)
        self._pending_since: dict[tuple[str, str], float] = {}
        engine.observers.append(self.observe)

    def collect(self) -> Iterator[Metric]:
        for histogram in (
            self.dispatch_latency,
            self.end_to_end_latency,
            self.append_latency,
            self.batch_size,
        ):
            yield histogram.collect()

    def observe(self, events: list[ev.Event], now: float, append_seconds: float) -> None:
        """Engine observer: called after each commit with the events it made durable.

        It runs on the master's event loop, right after the turn: it must never raise,
        so a bug here costs a histogram sample, not the master.
        """
        try:
            self._observe(events, append_seconds)
        except Exception:
            log.exception("metrics observer failed", extra={"action": "metrics_error"})

    def _observe(self, events: list[ev.Event], append_seconds: float) -> None:
        self.append_latency.observe(append_seconds)
        self.batch_size.observe(len(events))
        tasks = self.engine.state.tasks
        pending_since = self._pending_since
        dispatch = self.dispatch_latency.observe
        end_to_end = self.end_to_end_latency.observe
        for event in events:
            if type(event) is ev.Accepted:  # the most common event, nothing to measure yet
                continue
            if isinstance(event, ev.Scheduled):
                key = (event.group, event.id)
                since = pending_since.pop(key, None) if pending_since else None
                if since is None and event.attempt == 1:
                    record = tasks.get(key)
                    since = record.accepted_at if record is not None else None
                if since is not None:
                    dispatch(max(0.0, event.at - since), (event.group,))
            elif isinstance(event, _TERMINAL_TYPES):
                key = (event.group, event.id)
                if pending_since:
                    pending_since.pop(key, None)
                record = tasks.get(key)
                if record is not None:
                    status = _TERMINAL[type(event)]
                    end_to_end(max(0.0, event.at - record.accepted_at), (event.group, status))
            elif isinstance(event, _PENDING_AGAIN):
                pending_since[(event.group, event.id)] = event.at

    def render(self) -> tuple[bytes, str]:
        """The metrics page and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_installed: weakref.WeakKeyDictionary[Engine, EngineMetrics] = weakref.WeakKeyDictionary()


def install(engine: Engine) -> EngineMetrics:
    """The engine's metrics, created (and its observer registered) once per engine."""
    metrics = _installed.get(engine)
    if metrics is None:
        metrics = _installed[engine] = EngineMetrics(engine)
    return metrics


def render(engine: Engine) -> tuple[bytes, str]:
    """The metrics page of ``engine`` and its content type."""
    return install(engine).render()
