"""The systems of the comparison, imported only when selected (the peers need bench/compare/.venv).

Each module defines its system's tasks (imported by the peer's own worker processes)
and the :class:`~systems.base.System` that drives it from the harness.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from systems.base import System

#: ``--systems`` name → ``module:class`` (a mawex variant differs only in its journal,
#: for ``-busy`` in ``mawex master --busy-poll``, for ``-inline`` in ``mawex worker
#: --sandbox-inline`` and for ``-unix`` in a Unix socket between the master and the
#: workers and clients: set those beside peers on ``run.py --redis-unix``).
SYSTEMS: dict[str, str] = {
    "mawex": "systems.mawex_system:Mawex",
    "mawex-normal": "systems.mawex_system:MawexNormal",
    "mawex-busy": "systems.mawex_system:MawexBusy",
    "mawex-normal-busy": "systems.mawex_system:MawexNormalBusy",
    "mawex-busy-inline": "systems.mawex_system:MawexBusyInline",
    "mawex-normal-busy-inline": "systems.mawex_system:MawexNormalBusyInline",
    "mawex-unix": "systems.mawex_system:MawexUnix",
    "mawex-busy-inline-unix": "systems.mawex_system:MawexBusyInlineUnix",
    "mawex-normal-busy-inline-unix": "systems.mawex_system:MawexNormalBusyInlineUnix",
    "mawex-pg": "systems.mawex_system:MawexPostgres",
    "huey": "systems.huey_peer:Huey",
    "dramatiq": "systems.dramatiq_peer:Dramatiq",
    "celery": "systems.celery_peer:Celery",
    "celery-prefork": "systems.celery_peer:CeleryPrefork",
    "rq": "systems.rq_peer:Rq",
    "rq-fork": "systems.rq_peer:RqFork",
    "arq": "systems.arq_peer:Arq",
}
DEFAULT = (
    "mawex",
    "mawex-normal",
    "mawex-busy",
    "mawex-normal-busy",
    "mawex-busy-inline",
    "mawex-normal-busy-inline",
    "huey",
    "dramatiq",
    "celery",
    "celery-prefork",
    "rq",
    "rq-fork",
    "arq",
)


def load(name: str) -> type[System]:
    """The class of system ``name`` (imports its peer library only now)."""
    module, _, attr = SYSTEMS[name].partition(":")
    cls: type[System] = getattr(importlib.import_module(module), attr)
    return cls
