"""Sandboxes: where an executor's code runs. ``create_sandbox(kind, ...)`` builds one by kind."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, cast

from mawex.errors import ConfigError
from mawex.sandbox.base import Outcome, Sandbox

__all__ = ["Outcome", "Sandbox", "create_sandbox", "known_kinds"]

#: Sandbox kinds and the ``module:class`` implementing each, imported on first use.
_KINDS: dict[str, str] = {
    "local": "mawex.sandbox.local:LocalSandbox",
    "forked": "mawex.sandbox.forked:ForkedSandbox",
    "k8s": "mawex.sandbox.k8s:K8sSandbox",
}


def known_kinds() -> list[str]:
    """The sandbox kinds :func:`create_sandbox` accepts."""
    return sorted(_KINDS)


def create_sandbox(
    kind: str, executor_ref: str, args: Mapping[str, str] | None = None, **options: Any
) -> Sandbox:
    """Build a sandbox of ``kind`` for ``executor_ref`` (``module:attr``) with ``--arg`` ``args``.

    ``options`` are the kind's own keyword settings. The executor is loaded by the
    sandbox's ``start()``, not here. An unknown kind or option raises ConfigError.
    """
    target = _KINDS.get(kind)
    if target is None:
        raise ConfigError(f"unknown sandbox {kind!r}; known: {', '.join(known_kinds())}")
    module_name, _, class_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), class_name)
    try:
        sandbox = factory(executor_ref, dict(args or {}), **options)
    except TypeError as exc:
        raise ConfigError(f"invalid options for the {kind} sandbox: {exc}") from exc
    return cast(Sandbox, sandbox)
