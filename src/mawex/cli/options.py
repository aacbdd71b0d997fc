"""Shared option helpers: every flag also reads ``MAWEX_<OPTION>`` and says so in ``--help``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def envvar_for(flag: str) -> str:
    """``--master-id`` → ``MAWEX_MASTER_ID`` (``--wait/--no-wait`` → ``MAWEX_WAIT``)."""
    return "MAWEX_" + flag.split("/")[0].lstrip("-").replace("-", "_").upper()


def option(flag: str, *more: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option whose environment variable follows the ``MAWEX_<OPTION>`` rule."""
    kwargs.setdefault("envvar", envvar_for(flag))
    kwargs.setdefault("show_envvar", True)
    if "default" in kwargs and kwargs["default"] is not None:
        kwargs.setdefault("show_default", True)
    return click.option(flag, *more, **kwargs)


def split_list(value: str | tuple[str, ...] | None) -> list[str]:
    """``a,b`` or repeated flags → ``["a", "b"]``."""
    if value is None:
        return []
    parts = [value] if isinstance(value, str) else list(value)
    return [p.strip() for part in parts for p in part.split(",") if p.strip()]


def token_option() -> Callable[[F], F]:
    return option("--token", help="Bearer token the master requires.", default=None)


def ca_option() -> Callable[[F], F]:
    return option("--ca", help="CA bundle to trust for a master's TLS certificate.", default=None)


def masters_option(required: bool = True) -> Callable[[F], F]:
    return option(
        "--master",
        "masters",
        envvar="MAWEX_MASTER",
        required=required,
        help="Master URL(s), comma-separated: http(s)://HOST:PORT, or unix:PATH for a master "
        "on a Unix socket of this machine; standbys redirect to the leader.",
    )


def log_options(func: F) -> F:
    func = option(
        "--log-format",
        type=click.Choice(["auto", "text", "json"]),
        default="auto",
        help="Log format: text on a TTY, JSON lines otherwise (auto).",
    )(func)
    return option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        help="Log level.",
    )(func)


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when available."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
