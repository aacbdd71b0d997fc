"""Wire safety: JSON only (no pickle, marshal, eval or exec anywhere in mawex), strict
schemas, and results JSON cannot carry failing their attempt instead of the worker."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import httpx
import msgspec
import pytest

from mawex.wire import api
from mawex.wire import executor as xwire
from mawex.wire import worker as wire

from .conftest import ThreadMaster, ThreadWorker

SRC = Path(__file__).resolve().parents[2] / "src" / "mawex"

#: Modules that turn bytes into code or objects: none may be imported.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                  "jsonpickle", "copyreg"}  # fmt: skip
#: Builtins that run code from data.
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "input"}
#: Where mawex imports modules by name, and why that name is never from the network.
IMPORT_BY_NAME = {
    "sandbox/__init__.py": "a sandbox kind from a fixed table (create_sandbox)",
    "sandbox/executor_ref.py": "the executor named by the worker's operator (module:attr)",
    "journal/__init__.py": "the driver of a journal URL scheme, from a fixed table",
}


def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    return files


def test_no_pickle_marshal_eval_or_exec_in_src() -> None:
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(SRC).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            if names & UNSAFE_MODULES:
                problems.append(f"{where}:{node.lineno} imports {names & UNSAFE_MODULES}")
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
                    problems.append(f"{where}:{node.lineno} calls {func.id}()")
                if isinstance(func, ast.Attribute):
                    owner = func.value.id if isinstance(func.value, ast.Name) else ""
                    if owner == "yaml" and func.attr in {"load", "unsafe_load", "full_load"}:
                        problems.append(f"{where}:{node.lineno} calls yaml.{func.attr}")
                    if owner in UNSAFE_MODULES:
                        problems.append(f"{where}:{node.lineno} calls {owner}.{func.attr}")
                    if func.attr == "import_module" and where not in IMPORT_BY_NAME:
                        problems.append(f"{where}:{node.lineno} imports a module by name")
                for keyword in node.keywords:
                    if keyword.arg == "shell" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                    ):
                        problems.append(f"{where}:{node.lineno} runs a shell command")
    assert problems == []


def test_the_scan_would_see_them() -> None:
    """The scan above is not vacuous: it flags each construct it looks for."""
    sample = "import pickle\nfrom marshal import loads\neval('1')\nexec('x=1')\n"
    tree = ast.parse(sample)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)]  # type: ignore[attr-defined]
    assert len(imports) == 2 and set(calls) == {"eval", "exec"}


# -- strict schemas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"hello","worker":"w","group":"g","pod":"p","extra":1}',  # unknown field
        b'{"type":"hello","worker":"w","group":"g"}',  # missing field
        b'{"type":"hello","worker":1,"group":"g","pod":"p"}',  # wrong type
        b'{"type":"hello","worker":"w","group":"g","pod":"p","sandbox":"' + b"s" * 40 + b'"}',
        b'{"type":"hello","worker":"' + b"w" * 65 + b'","group":"g","pod":"p"}',  # too long
        b'{"type":"finished","group":"g","id":"' + b"i" * 201 + b'","attempt":1,"ok":true}',
        b'{"type":"finished","group":"g","id":"i","attempt":-1,"ok":true}',
        b'{"type":"finished","group":"g","id":"i","attempt":1.5,"ok":true}',
        b'{"type":"finished","group":"g","id":"i","attempt":1,"ok":"yes"}',
        b'{"type":"reboot"}',  # unknown message
        b'{"type":"heartbeat","at":1}',
        b"[1, 2]",
        b'"hello"',
        b"{'type': 'hello'}",  # not JSON
        b"\x80\x04\x95pickle",  # a pickle
    ],
)
def test_worker_channel_schema_is_strict(frame: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        wire.decode_worker_message(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"register","secret":"s","extra":true}',
        b'{"type":"register","secret":5}',
        b'{"type":"result","ok":true,"result":NaN}',
        b'{"type":"exec","code":"import os"}',
        b"\x80\x04\x95",
    ],
)
def test_connect_back_schema_is_strict(frame: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        xwire.decode_executor_frame(frame)


def test_task_schema_is_strict() -> None:
    limits = api.ApiLimits()
    for body in (
        b'{"id":"a","group":"g","priority":1}',
        b'{"id":"a","group":"g","max_attempts":"2"}',
        b'{"id":"a b","group":"g"}',
        b'{"id":"a","group":"g/h"}',
        b'{"id":"a","group":"g","payload":NaN}',
    ):
        with pytest.raises(Exception, match=r"invalid|malformed|must|id|group"):
            api.parse_task(body, limits)


# -- results JSON cannot carry ---------------------------------------------------------------


@pytest.mark.parametrize("sandbox", ["local", "forked"])
def test_unserialisable_result_fails_the_attempt_not_the_worker(sandbox: str) -> None:
    with (
        ThreadMaster() as master,
        ThreadWorker(
            master, "tests.security.executors:picky", group="w", pod="p", sandbox=sandbox
        ) as worker,
    ):
        worker.wait_connected(60)
        with httpx.Client(base_url=master.url, timeout=30) as http:
            for id, payload in (("bad", "bad"), ("bytes", "bytes"), ("nan", "nan"), ("ok", 5)):
                body = {"id": id, "group": "w", "payload": payload}
                assert http.post("/v1/tasks", json=body).status_code == 202
            tasks = {
                id: http.get(f"/v1/tasks/w/{id}", params={"wait": 30}).json()
                for id in ("bad", "bytes", "nan", "ok")
            }
            topic = http.get("/v1/results", params={"from": 0}).text
        assert tasks["bad"]["status"] == "failed", tasks["bad"]
        assert "not JSON-serialisable" in tasks["bad"]["error"]
        # NaN and bytes have no JSON form: they fail, or arrive as valid JSON (null, a
        # base64 string), never as something a JSON parser refuses (checked on the topic)
        assert tasks["nan"]["status"] in ("failed", "completed")
        assert tasks["bytes"]["status"] in ("failed", "completed")
        assert tasks["ok"] == {**tasks["ok"], "status": "completed", "result": 5}
        assert worker.worker.connected.is_set(), "the worker kept serving"
        json.loads(topic, parse_constant=lambda c: pytest.fail(f"{c} on the topic"))
