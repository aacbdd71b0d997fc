"""Load an executor named ``module:attr`` and call it with a :class:`~mawex.model.Task`.

``attr`` may be dotted (``module.sub:Outer.inner``). A class is instantiated once
with the worker's ``--arg key=value`` pairs as keyword arguments (all values are
strings) and the instance is called per task; any other callable (a function, a
callable instance) is called as is and takes no ``--arg``. ``async def``
functions and classes with an ``async def __call__`` are detected.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from mawex.errors import ConfigError, ExecutorLoadError
from mawex.model import Task
from mawex.sandbox.base import Outcome

__all__ = [
    "ERROR_LIMIT",
    "Executor",
    "encode_result",
    "format_error",
    "load_executor",
    "parse_args",
    "split_ref",
]

#: Upper bound, in characters, of the error text an exception turns into.
ERROR_LIMIT = 4096


def parse_args(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``["key=value", ...]`` (the worker's ``--arg`` options) into a dict.

    The key must be a Python identifier (it becomes a keyword argument); the value
    is everything after the first ``=`` and may be empty. A malformed or repeated
    key raises :class:`~mawex.errors.ConfigError`.
    """
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"invalid --arg {pair!r}: expected key=value")
        if not key.isidentifier():
            raise ConfigError(f"invalid --arg {pair!r}: the key must be a Python identifier")
        if key in args:
            raise ConfigError(f"--arg {key} is given more than once")
        args[key] = value
    return args


def split_ref(ref: str) -> tuple[str, list[str]]:
    """Split ``"module.sub:attr.inner"`` into ``("module.sub", ["attr", "inner"])``."""
    module, sep, attr = ref.partition(":")
    names = attr.split(".")
    valid = (
        sep == ":"
        and all(part.isidentifier() for part in module.split("."))
        and all(name.isidentifier() for name in names)
    )
    if not valid:
        raise ExecutorLoadError(
            f"invalid executor reference {ref!r}: expected module:attr, e.g. mypkg.tasks:handle"
        )
    return module, names


def _is_async_callable(target: object) -> bool:
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(type(target), "__call__", None)  # noqa: B004 - the class's __call__ is meant
    return call is not None and inspect.iscoroutinefunction(call)


class Executor:
    """A loaded executor: ``call(task)`` returns its result, or a coroutine when ``is_async``."""

    __slots__ = ("is_async", "ref", "target")

    def __init__(self, ref: str, target: Callable[[Task], Any]) -> None:
        self.ref = ref
        self.target = target
        self.is_async = _is_async_callable(target)

    def call(self, task: Task) -> Any:
        """Call the executor with ``task`` (await the result when ``is_async``)."""
        return self.target(task)

    def __repr__(self) -> str:
        return f"Executor({self.ref!r}, is_async={self.is_async})"


def _resolve(ref: str) -> object:
    module_name, names = split_ref(ref)
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ExecutorLoadError(
                f"cannot load executor {ref!r}: no module named {missing!r}"
            ) from exc
        raise ExecutorLoadError(
            f"cannot load executor {ref!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise ExecutorLoadError(
            f"cannot load executor {ref!r}: importing {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for i, name in enumerate(names):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            where = f"{module_name}:{'.'.join(names[:i])}" if i else f"module {module_name}"
            raise ExecutorLoadError(
                f"cannot load executor {ref!r}: {where} has no attribute {name!r}"
            ) from None
    return obj


def load_executor(ref: str, args: Mapping[str, str] | None = None) -> Executor:
    """Import ``ref`` and build the executor.

    Raises :class:`~mawex.errors.ExecutorLoadError` when the module or attribute is
    missing, the class cannot be built with ``args``, or the result is not callable;
    :class:`~mawex.errors.ConfigError` when ``args`` are given to a non-class.
    """
    args = dict(args or {})
    obj = _resolve(ref)
    if inspect.isclass(obj):
        try:
            instance = obj(**args)
        except Exception as exc:
            given = ", ".join(f"{k}=" for k in args) or "no --arg"
            raise ExecutorLoadError(
                f"cannot build executor {ref!r} with {given}: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(instance):
            raise ExecutorLoadError(
                f"executor class {ref!r} must define __call__(self, task) to be called per task"
            )
        return Executor(ref, instance)
    if not callable(obj):
        raise ExecutorLoadError(
            f"executor {ref!r} is a {type(obj).__name__}, not a function or class"
        )
    if args:
        raise ConfigError(
            f"executor {ref!r} is not a class, so it takes no --arg "
            f"(given: {', '.join(sorted(args))}); use a class whose __init__ accepts them"
        )
    return Executor(ref, obj)


def encode_result(value: object) -> Outcome:
    """The successful Outcome for ``value``, or a failed one if it is not JSON-serialisable."""
    try:
        return Outcome.success(msgspec.json.encode(value))
    except Exception as exc:
        return Outcome.failure(f"result is not JSON-serialisable: {type(exc).__name__}: {exc}")


def format_error(exc: BaseException, limit: int = ERROR_LIMIT) -> str:
    """``"<ExcType>: <message>"`` and the last lines of its traceback, at most ``limit`` chars.

    Frames of the sandbox machinery itself (``mawex.sandbox.*``) at the top of the
    traceback are left out: users see their own code.
    """
    message = str(exc)
    head = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(head) > limit // 2:
        head = head[: limit // 2 - 3] + "..."
    tb = exc.__traceback__
    while tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith(
        "mawex.sandbox."
    ):
        tb = tb.tb_next
    report = traceback.TracebackException(type(exc), exc, tb)
    text = "".join(report.format())
    last = "".join(report.format_exception_only())
    if text.endswith(last):  # the head already says it
        text = text[: len(text) - len(last)]
    text = text.rstrip()
    room = limit - len(head) - 1
    if len(text) > room:
        tail = text[len(text) - room + 4 :]
        newline = tail.find("\n")
        text = "...\n" + (tail[newline + 1 :] if 0 <= newline < len(tail) - 1 else tail)
    return f"{head}\n{text}"
