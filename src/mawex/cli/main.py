"""``mawex``: the command group and the one place errors become exit codes."""

from __future__ import annotations

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
    """Entry point: expected failures print one line and exit non-zero, never a traceback."""
    try:
        cli.main(args=argv, prog_name="mawex", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mawex: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ConfigError, Rejected) as exc:
        click.echo(f"mawex: error: {exc}", err=True)
        sys.exit(2)
    except MawexError as exc:
        click.echo(f"mawex: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
