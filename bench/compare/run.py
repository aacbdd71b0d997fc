"""mawex side by side with celery, huey, dramatiq, rq and arq: the same workload on each.

Every system gets the same number of worker OS processes (``--processes``, 2) and
the same no-op task; the peers use the local Redis (database ``--redis-db``, which
is flushed between systems: never another database), mawex its own master. Per
system and repetition, after a warm-up that is not measured:

- ``enqueue``: ``--tasks`` submits with no worker consuming, one client call each;
- ``e2e``: ``--tasks`` no-op tasks submitted as fast as the client can while it
  collects the results; tasks/s = N / (first submit → last result seen);
- ``round trip``: ``--latency-tasks`` sequential submit-then-wait (p50/p99/mean).

Repetitions interleave the systems (rep 1: all, rep 2: all, …); the table shows
the median and the min-max over them, and the ratio of each mawex variant to the
best peer. Writes ``compare-<timestamp>.md`` and ``.json`` (every sample and the
environment) into ``--out``. Every process is stopped by its PID or process group.

``--redis-unix`` starts a Redis of the harness's own (no persistence, as the local one)
on a Unix socket for the peers, to set beside the ``mawex-*-unix`` variants, whose
workers and clients reach their master on a Unix socket: every system then talks
over Unix sockets on this machine.

Run: ``make bench-compare COMPARE_ARGS="--quick"`` or
``bench/compare/.venv/bin/python bench/compare/run.py [--systems huey,mawex] [--reps 3]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # bench/_common.py

from _common import DEFAULT_PG, Processes, git_describe, percentile  # noqa: E402
from systems import DEFAULT, SYSTEMS, load  # noqa: E402
from systems.base import REDIS_ENV  # noqa: E402

if TYPE_CHECKING:  # the peers' modules import lazily: --help works without them
    from systems.base import System

MARKER = "mawex-bench-compare"
PACKAGES = (
    "mawex",
    "httpx",
    "uvloop",
    "huey",
    "dramatiq",
    "celery",
    "kombu",
    "rq",
    "arq",
    "redis",
    "hiredis",
)


# -- Redis: one database of our own ---------------------------------------------------------


class RedisDb:
    """The benchmark's Redis database: FLUSHDB of that one database only, never FLUSHALL."""

    def __init__(self, url: str, force: bool) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url)
        self.client.ping()
        size = self.client.dbsize()
        if size and not self.client.exists(MARKER) and not force:
            raise SystemExit(
                f"{url} holds {size} keys this harness did not write: choose another "
                "--redis-db (or pass --force-flush if they may go)"
            )
        self.flush()

    def flush(self) -> None:
        self.client.flushdb()
        self.client.set(MARKER, "database used by bench/compare/run.py, flushed between runs")

    def server(self) -> dict[str, Any]:
        """Version and persistence settings of the server (RDB ``save`` when CONFIG is allowed)."""
        import redis

        info = self.client.info()
        try:
            save = self.client.config_get("save").get("save")
        except redis.ResponseError:
            save = None
        return {
            "url": self.url,
            "version": info.get("redis_version"),
            "aof_enabled": info.get("aof_enabled"),
            "rdb_save": save,
            "db": self.client.connection_pool.connection_kwargs.get("db"),
        }

    def close(self) -> None:
        self.flush()
        self.client.delete(MARKER)
        self.client.close()


def redis_db_url(server: str, db: int) -> str:
    """The URL of database ``db`` of the server at ``server`` (``redis://`` or ``unix://``)."""
    if server.startswith("unix://"):
        return f"{server}?db={db}"
    return f"{server.rstrip('/')}/{db}"


class UnixRedis:
    """A ``redis-server`` of the harness's own on a Unix socket, without persistence."""

    def __init__(self) -> None:
        import redis

        self.dir = Path(tempfile.mkdtemp(prefix="mawex-compare-redis-"))
        self.path = self.dir / "redis.sock"
        argv = ["redis-server", "--port", "0", "--unixsocket", str(self.path)]
        argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(unix_socket_path=str(self.path)).ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise SystemExit(f"redis-server on {self.path} did not start") from None
                time.sleep(0.05)
        self.url = f"unix://{self.path}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- one system, one repetition ------------------------------------------------------------


@dataclass
class Sample:
    """One repetition of one system."""

    rep: int
    enqueue_per_s: float | None = None
    e2e_per_s: float | None = None
    rt_p50_ms: float | None = None
    rt_p99_ms: float | None = None
    rt_mean_ms: float | None = None
    worker_pids: list[int] = field(default_factory=list)
    roundtrips_ms: list[float] = field(default_factory=list)
    load_avg_1m_before: float = 0.0
    seconds: float = 0.0
    error: str | None = None


def run_one(name: str, rep: int, args: argparse.Namespace, db: RedisDb) -> tuple[Sample, dict]:
    """Start ``name``, measure the three workloads, stop everything it started."""
    from systems.base import Settings

    workdir = Path(tempfile.mkdtemp(prefix=f"mawex-compare-{name}-"))
    settings = Settings(db.url, args.processes, args.log_level, workdir, options(args))
    procs = Processes(workdir)
    sample = Sample(rep, load_avg_1m_before=os.getloadavg()[0])
    began = time.monotonic()
    system: System | None = None
    config: dict[str, Any] = {}
    tag = f"r{rep}"
    try:
        db.flush()
        system = load(name)(settings, procs)
        config = system.config()
        system.start()
        system.enqueue_only(min(args.warmup, 100), f"{tag}-warm-enqueue")
        sample.enqueue_per_s = args.tasks / system.enqueue_only(args.tasks, f"{tag}-enqueue")
        db.flush()  # the peers' enqueued tasks must not reach the workers
        sample.worker_pids = system.start_workers()
        system.throughput(args.warmup, f"{tag}-warm-e2e")
        sample.e2e_per_s = args.tasks / system.throughput(args.tasks, f"{tag}-e2e")
        # after the burst: a client that has results of it left to drain does so now
        system.round_trips(min(args.warmup, 20), f"{tag}-warm-rt")
        trips = system.round_trips(args.latency_tasks, f"{tag}-rt")
        sample.roundtrips_ms = [round(t * 1e3, 4) for t in trips]
        sample.rt_p50_ms = percentile(trips, 0.5) * 1e3
        sample.rt_p99_ms = percentile(trips, 0.99) * 1e3
        sample.rt_mean_ms = statistics.fmean(trips) * 1e3
    except Exception as exc:
        sample.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        print(f"  {name} rep {rep} FAILED: {sample.error}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        for proc in procs.procs:
            print(f"  --- {proc.name} (pid {proc.pid}):\n{proc.tail(10)}", file=sys.stderr)
    finally:
        if system is not None:
            try:
                system.close()
            finally:
                procs.stop_all()
                system.stop()
        procs.stop_all()
        db.flush()
        if args.keep:
            print(f"  logs of {name} rep {rep}: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sample.seconds = time.monotonic() - began
    return sample, config


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mawex_journal": args.mawex_journal,
        "mawex_concurrency": args.mawex_concurrency,
        "mawex_in_flight": args.mawex_in_flight,
        "mawex_client_busy_poll": args.mawex_client_busy_poll,
        "pg_url": args.pg_url,
        "dramatiq_threads": args.dramatiq_threads,
        "dramatiq_poll_ms": args.dramatiq_poll_ms,
        "arq_poll_ms": args.arq_poll_ms,
        "client_loop": args.client_loop,
    }


# -- summary --------------------------------------------------------------------------------


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """Median, min and max of the repetitions that produced a value."""
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "n": len(got)}


def summarize(samples: list[Sample]) -> dict[str, Any]:
    return {
        key: spread([getattr(s, key) for s in samples])
        for key in ("e2e_per_s", "enqueue_per_s", "rt_p50_ms", "rt_p99_ms", "rt_mean_ms")
    }


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(figure: dict[str, float] | None) -> str:
    if figure is None:
        return "—"
    if figure["n"] == 1:
        return fmt(figure["median"])
    return f"{fmt(figure['median'])} [{fmt(figure['min'])}-{fmt(figure['max'])}]"


def ratios(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each mawex variant against the best peer on e2e, enqueue and round-trip p50."""
    peers = {n: s for n, s in summary.items() if not n.startswith("mawex")}
    out = []
    for name, figures in summary.items():
        if not name.startswith("mawex"):
            continue
        for key, best_of, better in (
            ("e2e_per_s", max, "higher"),
            ("enqueue_per_s", max, "higher"),
            ("rt_p50_ms", min, "lower"),
        ):
            have = {p: f[key]["median"] for p, f in peers.items() if f.get(key)}
            mine = figures.get(key)
            if not have or not mine:
                continue
            best = best_of(have, key=lambda p: have[p])
            out.append(
                {
                    "mawex": name,
                    "figure": key,
                    "mawex_median": mine["median"],
                    "best_peer": best,
                    "best_peer_median": have[best],
                    "ratio": mine["median"] / have[best],
                    "better": better,
                }
            )
    return out


LABELS = {
    "e2e_per_s": "e2e tasks/s",
    "enqueue_per_s": "enqueue/s",
    "rt_p50_ms": "round-trip p50",
}


def markdown(report: dict[str, Any]) -> str:
    env, args = report["environment"], report["args"]
    lines = [
        f"# mawex vs peers — {report['started']}",
        "",
        f"{args['processes']} worker processes per system, no-op task, "
        f"{args['tasks']:,} tasks e2e and enqueue, {args['latency_tasks']} sequential round "
        f"trips, {args['warmup']} warm-up tasks, {args['reps']} repetition(s) interleaved: "
        "median [min-max]. Redis "
        f"{env['redis']['version']} db {env['redis']['db']} (AOF "
        f"{'on' if env['redis']['aof_enabled'] else 'off'}, RDB save "
        f"{env['redis']['rdb_save'] or 'off'!r}), {env['cpus']} CPUs, load "
        f"{env['load_avg_1m_before']:.2f} before, git {env['git']}.",
        "",
        "| system | configuration | e2e tasks/s | enqueue/s | round trip p50 ms "
        "| p99 ms | mean ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["systems"].items():
        s = entry["summary"]
        errors = [x["error"] for x in entry["samples"] if x["error"]]
        note = f" (failed {len(errors)}x: {errors[0]})" if errors else ""
        lines.append(
            f"| {name} | {entry['config'].get('summary', '')}{note} | {cell(s['e2e_per_s'])} "
            f"| {cell(s['enqueue_per_s'])} | {cell(s['rt_p50_ms'])} | {cell(s['rt_p99_ms'])} "
            f"| {cell(s['rt_mean_ms'])} |"
        )
    if report["ratios"]:
        lines += ["", "Ratio mawex / best peer (medians):", ""]
        for r in report["ratios"]:
            hint = "higher is better" if r["better"] == "higher" else "lower is better"
            lines.append(
                f"- {r['mawex']} {LABELS[r['figure']]}: **{r['ratio']:.2f}x** "
                f"({fmt(r['mawex_median'])} vs {r['best_peer']} {fmt(r['best_peer_median'])}; "
                f"{hint})"
            )
    lines += ["", "Configurations:", ""]
    for name, entry in report["systems"].items():
        c = entry["config"]
        if c:
            lines.append(f"- **{name}**: {c.get('worker', '')}; results: {c.get('result', '')}")
    return "\n".join(lines) + "\n"


def environment(db: RedisDb) -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_1m_before": os.getloadavg()[0],
        "git": git_describe(),
        "packages": versions,
        "redis": db.server(),
    }


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--systems", default=",".join(DEFAULT), help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    add("--tasks", type=int, default=5000, help="tasks of the e2e and enqueue workloads")
    add("--latency-tasks", type=int, default=500, help="sequential round trips")
    add("--warmup", type=int, default=200, help="warm-up tasks before measuring (excluded)")
    add("--reps", type=int, default=3, help="repetitions, systems interleaved")
    add("--processes", type=int, default=2, help="worker OS processes per system")
    add("--redis-url", default="redis://127.0.0.1:6379", help="Redis server of the peers")
    add(
        "--redis-unix",
        action="store_true",
        help="the peers on a Redis of the harness's own, on a Unix socket (not --redis-url)",
    )
    add("--redis-db", type=int, default=9, help="Redis database of the peers (FLUSHDB'd)")
    add("--force-flush", action="store_true", help="flush --redis-db even if not ours")
    add(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log level of every worker and master (warning: no per-task log lines)",
    )
    add(
        "--client-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the asyncio clients (mawex, arq)",
    )
    add("--out", default=str(HERE.parent / "results"), help="directory for .md and .json")
    add("--quick", action="store_true", help="tiny sizes, 1 rep: a smoke test")
    add("--keep", action="store_true", help="keep each run's work directory (process logs)")
    add("--verbose", action="store_true", help="tracebacks of failures")
    group = parser.add_argument_group("mawex")
    group.add_argument(
        "--mawex-journal",
        choices=("sqlite", "sqlite-normal", "postgresql"),
        default="sqlite",
        help="journal of the 'mawex' system (mawex-normal and mawex-pg fix theirs)",
    )
    group.add_argument(
        "--mawex-concurrency",
        type=int,
        default=32,
        help="pods per worker process (mawex worker --concurrency)",
    )
    group.add_argument("--mawex-in-flight", type=int, default=256, help="submit() calls in flight")
    group.add_argument(
        "--mawex-client-busy-poll",
        type=float,
        default=0.0,
        help="busy_poll of the round trips' mawex.Client (seconds; 0: off)",
    )
    group.add_argument(
        "--pg-url", default=os.environ.get("MAWEX_BENCH_POSTGRESQL", DEFAULT_PG), help="mawex-pg"
    )
    group = parser.add_argument_group("peers")
    group.add_argument("--dramatiq-threads", type=int, default=8, help="threads per process")
    group.add_argument("--dramatiq-poll-ms", type=int, default=1, help="dramatiq_worker_timeout")
    group.add_argument("--arq-poll-ms", type=int, default=1, help="worker and result poll_delay")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.latency_tasks, args.warmup, args.reps = 300, 50, 20, 1
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}: choose from {', '.join(SYSTEMS)}")
    if args.redis_db == 0 and not args.force_flush:
        parser.error("--redis-db 0 is everyone's default database: choose another one")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # finally blocks stop children
    unix_redis = UnixRedis() if args.redis_unix else None
    server = unix_redis.url if unix_redis else args.redis_url
    try:
        db = RedisDb(redis_db_url(server, args.redis_db), args.force_flush)
    except BaseException:
        if unix_redis is not None:
            unix_redis.close()
        raise
    # the peers' modules, imported here too, build their clients from it
    os.environ[REDIS_ENV] = db.url
    started = datetime.datetime.now().astimezone()
    env = environment(db)
    samples: dict[str, list[Sample]] = {name: [] for name in args.systems}
    configs: dict[str, dict[str, Any]] = {}
    try:
        for rep in range(1, args.reps + 1):
            for name in args.systems:
                print(f"rep {rep}/{args.reps} {name} …", flush=True)
                sample, config = run_one(name, rep, args, db)
                samples[name].append(sample)
                configs[name] = config or configs.get(name, {})
                if sample.error is None:
                    print(
                        f"  e2e {fmt(sample.e2e_per_s or 0)}/s, enqueue "
                        f"{fmt(sample.enqueue_per_s or 0)}/s, round trip p50 "
                        f"{fmt(sample.rt_p50_ms or 0)} ms p99 {fmt(sample.rt_p99_ms or 0)} ms "
                        f"({sample.seconds:.0f} s, workers {sample.worker_pids})",
                        flush=True,
                    )
    finally:
        db.close()
        if unix_redis is not None:
            unix_redis.close()
    env["load_avg_1m_after"] = os.getloadavg()[0]
    summary = {name: summarize(s) for name, s in samples.items()}
    report = {
        "started": started.isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items()},
        "environment": env,
        "systems": {
            name: {
                "config": configs.get(name, {}),
                "summary": summary[name],
                "samples": [asdict(s) for s in samples[name]],
            }
            for name in args.systems
        },
        "ratios": ratios(summary),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"compare-{started.strftime('%Y%m%d-%H%M%S')}"
    text = markdown(report)
    Path(f"{stem}.md").write_text(text)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n" + text)
    print(f"written: {stem}.md, {stem}.json")
    failed = any(s.error for group in samples.values() for s in group)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
