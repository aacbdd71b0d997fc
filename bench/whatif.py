"""Run ``mawex`` with experimental patches applied: measure an optimisation before making it.

``python bench/whatif.py master ...`` is ``mawex master ...`` after applying the
patches named in ``MAWEX_BENCH_WHATIF`` (comma-separated). bench/throughput.py
starts the master and the workers through it with ``--whatif LIST``. The patches
are measurement aids, not fixes: they skip edge cases (timeouts, lingering code)
that the real change must keep.

=================  ==========================================================
``switch=S``       ``sys.setswitchinterval(S)``: how long the event loop may
                   hold the GIL while the SQLite journal thread waits for it
                   (CPython's default is 0.005 s)
``nodeflate``      no permessage-deflate on ``WS /v1/worker``, on both ends
``threadreuse``    ``LocalSandbox`` runs sync executors on one reused thread
                   instead of a new thread per task
``istopic``        ``events.is_topic`` tests ``type(event)`` against a frozenset
                   instead of ``isinstance`` with a union rebuilt on every call
=================  ==========================================================
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PATCHES = ("switch", "nodeflate", "threadreuse", "istopic")


def parse(spec: str) -> dict[str, str]:
    """``"switch=0.0005,nodeflate"`` → ``{"switch": "0.0005", "nodeflate": ""}``."""
    chosen: dict[str, str] = {}
    for item in spec.split(","):
        name, _, value = item.strip().partition("=")
        if not name:
            continue
        if name not in PATCHES:
            raise SystemExit(f"unknown what-if patch {name!r}; known: {', '.join(PATCHES)}")
        chosen[name] = value
    return chosen


def _no_deflate() -> None:
    import uvicorn

    from mawex.worker import runner

    original_init = uvicorn.Config.__init__

    @functools.wraps(original_init)
    def init(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs["ws_per_message_deflate"] = False
        original_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]
    patched = functools.partial(runner.connect, compression=None)  # type: ignore[attr-defined]
    runner.connect = patched  # type: ignore[attr-defined,assignment]


def _thread_reuse() -> None:
    from mawex.sandbox import local

    original = local.LocalSandbox._launch

    def launch(
        self: local.LocalSandbox, call: Callable[[], Any], is_async: bool
    ) -> asyncio.Future[Any]:
        if is_async:
            return original(self, call, is_async)
        pool: ThreadPoolExecutor | None = getattr(self, "_whatif_pool", None)
        if pool is None:
            pool = ThreadPoolExecutor(1, thread_name_prefix="mawex-local-executor")
            self._whatif_pool = pool  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pool.submit(local._thread_main, loop, future, call)
        return future

    local.LocalSandbox._launch = launch  # type: ignore[method-assign]


def _is_topic() -> None:
    from mawex.core import events as ev

    classes = frozenset(
        {ev.Scheduled, ev.Retrying, ev.Completed, ev.Failed, ev.Cancelled, ev.Expired}
    )

    def is_topic(event: ev.Event) -> bool:
        return type(event) in classes

    ev.is_topic = is_topic


def apply(chosen: dict[str, str]) -> None:
    if "switch" in chosen:
        sys.setswitchinterval(float(chosen["switch"] or "0.0005"))
    if "nodeflate" in chosen:
        _no_deflate()
    if "threadreuse" in chosen:
        _thread_reuse()
    if "istopic" in chosen:
        _is_topic()


def main() -> None:
    chosen = parse(os.environ.get("MAWEX_BENCH_WHATIF", ""))
    apply(chosen)
    print(f"whatif applied: {chosen}", file=sys.stderr, flush=True)
    from mawex.cli.main import main as mawex_main

    sys.argv[0] = "mawex"
    mawex_main()


if __name__ == "__main__":
    main()
