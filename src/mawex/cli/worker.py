"""``mawex worker``: one worker per listed group, in one pod (or ``--concurrency`` pods)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import click

from mawex.cli.k8s_options import k8s_options, k8s_sandbox_options
from mawex.cli.options import (
    ca_option,
    log_options,
    masters_option,
    option,
    run_async,
    split_list,
    token_option,
)

log = logging.getLogger("mawex.worker")


@click.command()
@click.argument("executor")
@masters_option()
@option("--group", "groups", required=True, help="Consumer group(s) to serve, comma-separated.")
@option("--pod", required=True, help="The pod: never more than one task at a time runs in it.")
@option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=1,
    help="Run this many pods in this process, POD-1 … POD-N, each running one task at a "
    "time for every group (for many small tasks: fewer processes, more tasks in flight).",
)
@option(
    "--sandbox",
    type=click.Choice(["local", "forked", "k8s"]),
    default="local",
    help="Where tasks run.",
)
@option("--arg", "args", multiple=True, help="key=value passed to an executor class (repeatable).")
@option(
    "--sandbox-inline",
    is_flag=True,
    default=False,
    help="local: run a plain (not async) executor on the worker's event loop instead of "
    "its executor thread: no thread hand-off per task, but while a call runs the worker "
    "neither heartbeats nor hears a cancel, and the task's timeout is checked only when "
    "it returns. For calls of milliseconds.",
)
@option(
    "--sandbox-mode",
    type=click.Choice(["auto", "warm", "spawn"]),
    default="auto",
    help="forked: warm (a pre-started zygote forks one process per task), spawn (a fresh "
    "interpreter per task) or auto (warm where safe).",
)
@option(
    "--sandbox-spawn",
    is_flag=True,
    default=False,
    help="forked: a fresh interpreter per task (same as --sandbox-mode spawn).",
)
@option(
    "--sandbox-memory",
    type=click.IntRange(1),
    default=None,
    help="forked: cap each task process's address space at this many MB.",
)
@option(
    "--sandbox-env",
    multiple=True,
    help="forked: environment variable NAME (or NAME=VALUE) to give the task process "
    "(repeatable); all others but PATH, HOME, LANG, PYTHONPATH, VIRTUAL_ENV are scrubbed. "
    "k8s: set in every task's container.",
)
@option(
    "--mount-path",
    type=click.Path(file_okay=False),
    default=None,
    help="forked: directory of files for the task: its working directory and $MAWEX_MOUNT_PATH. "
    "k8s: where --k8s-configmap is mounted in the task's container.",
)
@option(
    "--task-timeout",
    type=click.FloatRange(0, None, min_open=True),
    default=None,
    help="Cap on every attempt's timeout, seconds.",
)
@option(
    "--drain-timeout",
    type=click.FloatRange(0),
    default=30.0,
    help="On SIGTERM, seconds to let a running task finish before handing it back.",
)
@k8s_options
@token_option()
@ca_option()
@log_options
def worker(
    executor: str,
    masters: str,
    groups: str,
    pod: str,
    concurrency: int,
    sandbox: str,
    args: tuple[str, ...],
    sandbox_inline: bool,
    sandbox_mode: str,
    sandbox_spawn: bool,
    sandbox_memory: int | None,
    sandbox_env: tuple[str, ...],
    mount_path: str | None,
    task_timeout: float | None,
    drain_timeout: float,
    token: str | None,
    ca: str | None,
    log_level: str,
    log_format: str,
    **k8s: Any,
) -> None:
    """Run EXECUTOR (module:attr) for each group in --group, in pod --pod."""
    from mawex.logs import setup_logging
    from mawex.sandbox.executor_ref import load_executor, parse_args
    from mawex.worker.runner import build_workers

    setup_logging(log_level, log_format)
    # like `python -m`, find executors in the current directory (`mawex worker myjobs:Resize`)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    executor_args = parse_args(list(args))
    if sandbox_inline and sandbox != "local":
        raise click.UsageError(f"--sandbox-inline is for --sandbox local, not {sandbox}")
    if sandbox == "local":
        load_executor(executor, executor_args)  # fail fast, before connecting
    sandbox_options: dict[str, object] = {}
    if sandbox == "local" and sandbox_inline:
        sandbox_options = {"inline": True}
    elif sandbox == "forked":
        sandbox_options = {
            "mode": "spawn" if sandbox_spawn else sandbox_mode,
            "memory_mb": sandbox_memory,
            "env": list(sandbox_env),
            "mount_path": mount_path,
        }
    elif sandbox == "k8s":
        sandbox_options = k8s_sandbox_options(
            k8s, pod=pod, groups=split_list(groups), env=sandbox_env, mount_path=mount_path
        )
    pool = build_workers(
        executor,
        masters=masters,
        groups=split_list(groups),
        pod=pod,
        sandbox=sandbox,
        args=executor_args,
        sandbox_options=sandbox_options,
        concurrency=concurrency,
        token=token,
        ca=ca,
        task_timeout=task_timeout,
        drain_timeout=drain_timeout,
    )
    run_async(_run(pool))


async def _run(pool: object) -> None:
    from mawex.worker.runner import WorkerPool

    assert isinstance(pool, WorkerPool)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        log.info("stopping workers", extra={"action": "worker_stopping", "forced": signals > 1})
        pool.stop(drain=signals == 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await pool.run()
