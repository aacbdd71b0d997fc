"""``mawex executor``: internal, the process a forked or k8s sandbox starts.

``mawex executor --connect URL`` connects back to its worker, runs the one task it
is given and exits (see :mod:`mawex.sandbox.child`). ``--zygote`` runs the forked
sandbox's pre-started parent instead. This module is on the per-task path of the
spawn mode: it imports nothing heavy until the command runs.
"""

from __future__ import annotations

import click

from mawex.cli.options import option


@click.command(hidden=True)
@option("--connect", default=None, help="ws://HOST:PORT/v1/executor?secret=S of the worker.")
@option(
    "--memory-limit",
    type=click.IntRange(1),
    default=None,
    help="Cap the process's address space at this many MiB while the task runs.",
)
@option("--chdir", default=None, help="Working directory of the task.")
@option(
    "--zygote",
    "control_fd",
    type=click.IntRange(0),
    default=None,
    help="Run as the forked sandbox's zygote on this inherited control socket fd.",
)
@option("--executor", "executor_ref", default=None, help="The zygote's executor, module:attr.")
@option("--arg", "args", multiple=True, help="key=value for the zygote's executor class.")
@option("--spawn", is_flag=True, help="Zygote: exec a fresh interpreter per task.")
@option("--parent-pid", type=int, default=None, help="Zygote: exit if this is not the parent.")
@option("--websocket", is_flag=True, help="Zygote: children connect back over ws:// URLs.")
def executor(
    connect: str | None,
    memory_limit: int | None,
    chdir: str | None,
    control_fd: int | None,
    executor_ref: str | None,
    args: tuple[str, ...],
    spawn: bool,
    parent_pid: int | None,
    websocket: bool,
) -> None:
    """Internal: run one task for a worker (--connect URL), or a forked sandbox's zygote."""
    from mawex.sandbox import child

    if control_fd is not None:
        if not executor_ref:
            raise click.UsageError("--zygote needs --executor")
        from mawex.sandbox.executor_ref import parse_args

        code = child.zygote_main(
            control_fd,
            executor_ref,
            parse_args(list(args)),
            spawn=spawn,
            memory_mb=memory_limit,
            chdir=chdir,
            parent_pid=parent_pid,
            websocket=websocket,
        )
        child.exit_now(code)
    if not connect:
        raise click.UsageError("--connect URL is required")
    import faulthandler
    import signal

    faulthandler.enable()
    child.line_buffered_output()
    child.set_parent_death_signal(signal.SIGKILL)
    child.exit_now(child.run_task(connect, memory_mb=memory_limit, chdir=chdir))
