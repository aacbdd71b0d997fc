"""Loading executors named ``module:attr``: good and bad references, classes with --arg, async."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from mawex.errors import ConfigError, ExecutorLoadError
from mawex.model import Task
from mawex.sandbox.executor_ref import (
    encode_result,
    format_error,
    load_executor,
    parse_args,
    split_ref,
)

TASK = Task(id="t1", group="g", payload={"x": 1}, attempt=2)

USER_MODULE = """
import asyncio
import functools

NOT_CALLABLE = 42

def plain(task):
    return {"id": task.id, "payload": task.payload}

async def coro(task):
    await asyncio.sleep(0)
    return task.attempt

class Sync:
    def __init__(self, greeting="hi", count="1"):
        self.greeting = greeting
        self.count = int(count)

    def __call__(self, task):
        return [self.greeting] * self.count

class Async:
    async def __call__(self, task):
        return "async class"

class NotCallable:
    pass

class Exploding:
    def __init__(self):
        raise RuntimeError("boom in __init__")

class Outer:
    @staticmethod
    def inner(task):
        return "inner"

class _AsyncCallable:
    async def __call__(self, task):
        return "instance"

instance = _AsyncCallable()
partial_coro = functools.partial(coro)
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throw-away package ``<name>`` with a module ``<name>.tasks`` (and a broken one)."""
    name = f"mawex_user_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(textwrap.dedent(USER_MODULE))
    (package / "broken.py").write_text("raise ValueError('broken at import')\n")
    (package / "needs_dep.py").write_text("import mawex_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


@pytest.mark.parametrize(
    ("attr", "expected", "is_async"),
    [
        ("plain", {"id": "t1", "payload": {"x": 1}}, False),
        ("coro", 2, True),
        ("Sync", ["hi"], False),
        ("Async", "async class", True),
        ("Outer.inner", "inner", False),
        ("instance", "instance", True),
        ("partial_coro", 2, True),
    ],
)
async def test_good_refs(user_module: str, attr: str, expected: object, is_async: bool) -> None:
    executor = load_executor(f"{user_module}.tasks:{attr}")
    assert executor.is_async is is_async
    result = executor.call(TASK)
    if is_async:
        result = await result
    assert result == expected


def test_class_is_built_once_with_args(user_module: str) -> None:
    executor = load_executor(f"{user_module}.tasks:Sync", {"greeting": "yo", "count": "3"})
    assert executor.call(TASK) == ["yo", "yo", "yo"]
    assert executor.target is executor.target  # one instance, reused per task
    assert executor.target.greeting == "yo"  # type: ignore[attr-defined]


def test_shipped_examples_load() -> None:
    assert load_executor("mawex.examples.demo:echo").call(TASK) == {"x": 1}
    assert load_executor("mawex.examples.demo:sleep").is_async
    assert load_executor("mawex.examples.demo:Demo", {"delay_ms": "0"}).is_async
    assert not load_executor("mawex.examples.demo:Record", {"path": "/dev/null"}).is_async


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_colon", "expected module:attr"),
        (":attr", "expected module:attr"),
        ("module:", "expected module:attr"),
        ("mod ule:attr", "expected module:attr"),
        ("mod:a..b", "expected module:attr"),
        ("mawex_definitely_missing:attr", "no module named 'mawex_definitely_missing'"),
        ("{pkg}.nope:attr", "no module named '{pkg}.nope'"),
        ("{pkg}.broken:attr", "ValueError: broken at import"),
        ("{pkg}.needs_dep:attr", "No module named 'mawex_no_such_dependency'"),
        ("{pkg}.tasks:missing", "has no attribute 'missing'"),
        ("{pkg}.tasks:Outer.missing", "{pkg}.tasks:Outer has no attribute 'missing'"),
        ("{pkg}.tasks:NOT_CALLABLE", "is a int, not a function or class"),
        ("{pkg}.tasks:NotCallable", "must define __call__"),
        ("{pkg}.tasks:Exploding", "RuntimeError: boom in __init__"),
    ],
)
def test_bad_refs(user_module: str, ref: str, message: str) -> None:
    with pytest.raises(ExecutorLoadError) as info:
        load_executor(ref.format(pkg=user_module))
    assert message.format(pkg=user_module) in str(info.value)


def test_class_with_unknown_arg(user_module: str) -> None:
    with pytest.raises(ExecutorLoadError, match=r"with colour=: TypeError: .*colour"):
        load_executor(f"{user_module}.tasks:Sync", {"colour": "red"})


def test_args_to_a_function_are_a_config_error(user_module: str) -> None:
    with pytest.raises(ConfigError, match=r"is not a class, so it takes no --arg \(given: a, b\)"):
        load_executor(f"{user_module}.tasks:plain", {"b": "1", "a": "2"})


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], {}),
        (["path=/tmp/x"], {"path": "/tmp/x"}),
        (["a=1", "b="], {"a": "1", "b": ""}),
        (["url=http://h/?q=1"], {"url": "http://h/?q=1"}),
        ([" key =v"], {"key": "v"}),
    ],
)
def test_parse_args(pairs: list[str], expected: dict[str, str]) -> None:
    assert parse_args(pairs) == expected


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["novalue"], "expected key=value"),
        (["=v"], "expected key=value"),
        (["max-size=1"], "must be a Python identifier"),
        (["a=1", "a=2"], "given more than once"),
    ],
)
def test_parse_args_rejects(pairs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_args(pairs)


def test_split_ref() -> None:
    assert split_ref("a.b:C.d") == ("a.b", ["C", "d"])


def test_encode_result() -> None:
    assert encode_result({"a": [1, 2.5, None]}).result == b'{"a":[1,2.5,null]}'
    bad = encode_result({"a": object()})
    assert not bad.ok
    assert bad.error is not None
    assert bad.error.startswith("result is not JSON-serialisable: TypeError")
    assert msgspec.json.decode(encode_result("é").result) == "é"


def _raise_deep(depth: int) -> None:
    if depth == 0:
        raise KeyError("x" * 10_000)
    _raise_deep(depth - 1)


def test_format_error_is_bounded_and_names_the_error() -> None:
    try:
        _raise_deep(200)
    except KeyError as exc:
        text = format_error(exc, limit=4096)
    assert len(text) <= 4096
    assert text.startswith("KeyError: 'xxx")
    assert "_raise_deep" in text


def test_format_error_without_message() -> None:
    try:
        raise ValueError
    except ValueError as exc:
        text = format_error(exc)
    assert text.splitlines()[0] == "ValueError"
    assert "test_format_error_without_message" in text
