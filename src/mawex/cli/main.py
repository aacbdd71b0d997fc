"""``mawex``: the command group and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys

import click

from mawex import __version__
from mawex.cli import client_commands, demo, executor, master, worker
from mawex.errors import ConfigError, MawexError, Rejected


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mawex")
def cli() -> None:
    """mawex: distributed task scheduling, Master -> Worker -> Executor.

    Every option can also be set as MAWEX_<OPTION> in the environment
    (--master-id is MAWEX_MASTER_ID); flags win.
    """


cli.add_command(master.master)
cli.add_command(worker.worker)
cli.add_command(client_commands.submit)
cli.add_command(client_commands.status)
cli.add_command(client_commands.results)
cli.add_command(demo.demo)
cli.add_command(executor.executor)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures print one line and exit non-zero, never a traceback.

    Exit codes: 0 success, 1 the operation failed (master unreachable, task failed,
    journal error), 2 bad input (usage, invalid values, rejected by the master),
    130 interrupted.
    """
    try:
        cli.main(args=argv, prog_name="mawex", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mawex: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "mawex"
        click.echo(f"{where}: error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"mawex: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (ConfigError, Rejected) as exc:
        click.echo(f"mawex: error: {exc}", err=True)
        sys.exit(2)
    except MawexError as exc:
        click.echo(f"mawex: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`mawex results | head`): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:
        # the environment said no: a port in use, a missing file, a permission
        click.echo(f"mawex: error: {exc}", err=True)
        sys.exit(1)
