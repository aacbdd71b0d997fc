"""``mawex worker``: one worker per listed group, all in one pod."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

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
    "--sandbox",
    type=click.Choice(["local", "forked", "k8s"]),
    default="local",
    help="Where tasks run.",
)
@option("--arg", "args", multiple=True, help="key=value passed to an executor class (repeatable).")
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
@token_option()
@ca_option()
@log_options
def worker(
    executor: str,
    masters: str,
    groups: str,
    pod: str,
    sandbox: str,
    args: tuple[str, ...],
    task_timeout: float | None,
    drain_timeout: float,
    token: str | None,
    ca: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run EXECUTOR (module:attr) for each group in --group, in pod --pod."""
    from mawex.logs import setup_logging
    from mawex.sandbox.executor_ref import load_executor, parse_args
    from mawex.worker.runner import build_workers

    setup_logging(log_level, log_format)
    executor_args = parse_args(list(args))
    if sandbox == "local":
        load_executor(executor, executor_args)  # fail fast, before connecting
    pool = build_workers(
        executor,
        masters=masters,
        groups=split_list(groups),
        pod=pod,
        sandbox=sandbox,
        args=executor_args,
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
