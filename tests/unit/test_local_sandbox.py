"""The local sandbox: sync and async executors, errors, timeouts, cancel, lingering threads."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import msgspec
import pytest

from mawex.errors import ConfigError, ExecutorLoadError
from mawex.model import Task
from mawex.sandbox import Sandbox, create_sandbox, known_kinds
from mawex.sandbox.local import LocalSandbox

DEMO = "mawex.examples.demo"
HERE = __name__  # executors below are loaded from this very module

STARTS: list[float] = []
RELEASE = threading.Event()


def not_json(task: Task) -> object:
    return {"when": object()}


def exits(task: Task) -> None:
    sys.exit(3)


def returns_coroutine(task: Task) -> object:
    async def later() -> str:
        await asyncio.sleep(0)
        return "awaited"

    return later()


def stamped(task: Task) -> str:
    STARTS.append(time.monotonic())
    return task.id


async def stubborn(task: Task) -> str:
    """Ignores the first cancellation for a while (but not forever)."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)
    return "late"


def blocked(task: Task) -> str:
    RELEASE.wait(5)
    return "released"


def task(payload: object = None, id: str = "t1") -> Task:
    return Task(id=id, group="g", payload=payload, attempt=1)


async def started(
    ref: str, args: dict[str, str] | None = None, *, cancel_grace_s: float = 1.0
) -> LocalSandbox:
    sandbox = LocalSandbox(ref, args, cancel_grace_s=cancel_grace_s)
    await sandbox.start()
    return sandbox


async def test_is_a_sandbox() -> None:
    sandbox = LocalSandbox(f"{DEMO}:echo")
    assert isinstance(sandbox, Sandbox)
    assert sandbox.kind == "local"


async def test_sync_success() -> None:
    sandbox = await started(f"{DEMO}:echo")
    outcome = await sandbox.run(task({"x": [1, "é"]}), None)
    assert outcome.ok
    assert msgspec.json.decode(outcome.result) == {"x": [1, "é"]}
    assert outcome.lingering is None
    await sandbox.close()


async def test_async_success() -> None:
    sandbox = await started(f"{DEMO}:sleep")
    outcome = await sandbox.run(task({"seconds": 0.01}), 5)
    assert outcome.ok
    assert msgspec.json.decode(outcome.result) == {"slept": 0.01}


async def test_class_executor_with_args() -> None:
    sandbox = await started(f"{DEMO}:Demo", {"delay_ms": "1"})
    outcome = await sandbox.run(task({"a": 2, "b": [3, 4.5]}), None)
    assert outcome.ok
    assert msgspec.json.decode(outcome.result)["sum"] == 9.5
    failing = await sandbox.run(task({"fail": True}), None)
    assert not failing.ok
    assert failing.error is not None
    assert failing.error.startswith("ValueError: demo task t1 asked to fail")


async def test_load_error_at_start() -> None:
    with pytest.raises(ExecutorLoadError):
        await started(f"{DEMO}:nope")


async def test_run_before_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await LocalSandbox(f"{DEMO}:echo").run(task(), None)


@pytest.mark.parametrize("name", ["fail", "flaky"])
async def test_exception_becomes_a_failed_outcome(name: str) -> None:
    sandbox = await started(f"{DEMO}:{name}")
    outcome = await sandbox.run(task(), None)
    assert not outcome.ok
    assert outcome.error is not None
    first, *rest = outcome.error.splitlines()
    assert first.startswith("RuntimeError: ")
    assert "fails on purpose" in first
    assert any("demo.py" in line for line in rest)  # the user's frames
    assert not any("sandbox/local.py" in line for line in rest)  # not ours
    assert len(outcome.error) <= 4096


async def test_system_exit_does_not_take_the_worker_down() -> None:
    sandbox = await started(f"{HERE}:exits")
    outcome = await sandbox.run(task(), None)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("SystemExit: 3")


async def test_non_json_result_fails_the_attempt() -> None:
    sandbox = await started(f"{HERE}:not_json")
    outcome = await sandbox.run(task(), None)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("result is not JSON-serialisable: TypeError")


async def test_sync_function_returning_a_coroutine_is_awaited() -> None:
    sandbox = await started(f"{HERE}:returns_coroutine")
    outcome = await sandbox.run(task(), 5)
    assert outcome.ok
    assert outcome.result == b'"awaited"'


async def test_async_timeout_cancels_the_task() -> None:
    sandbox = await started(f"{DEMO}:sleep")
    began = time.monotonic()
    outcome = await sandbox.run(task({"seconds": 30}), 0.2)
    assert not outcome.ok
    assert outcome.error == "timed out after 0.2s"
    assert outcome.lingering is None  # the coroutine was cancelled for real
    assert time.monotonic() - began < 1.5
    assert not sandbox.busy


async def test_async_code_that_ignores_cancel_lingers() -> None:
    sandbox = await started(f"{HERE}:stubborn", cancel_grace_s=0.05)
    outcome = await sandbox.run(task(), 0.1)
    assert outcome.error == "timed out after 0.1s"
    assert outcome.lingering is not None
    assert sandbox.busy
    await asyncio.wait_for(outcome.lingering, 2)
    assert not sandbox.busy


async def test_sync_timeout_fails_at_once_and_lingers_until_the_thread_returns() -> None:
    sandbox = await started(f"{DEMO}:sleep_sync")
    began = time.monotonic()
    outcome = await sandbox.run(task({"seconds": 0.8}), 0.1)
    assert time.monotonic() - began < 0.5  # failed at the deadline, not when the thread returned
    assert not outcome.ok
    assert outcome.error == "timed out after 0.1s"
    assert outcome.lingering is not None
    assert sandbox.busy
    await asyncio.wait_for(outcome.lingering, 3)
    assert time.monotonic() - began >= 0.75
    assert not sandbox.busy
    assert (await sandbox.run(task({"seconds": 0}), 1)).ok


async def test_next_run_waits_for_a_lingering_thread() -> None:
    RELEASE.clear()
    STARTS.clear()
    sandbox = await started(f"{HERE}:blocked")
    first = await sandbox.run(task(id="first"), 0.05)
    assert first.lingering is not None
    sandbox.executor.target = stamped  # the next attempt records when its code starts
    second = asyncio.create_task(sandbox.run(task(id="second"), 1))
    await asyncio.sleep(0.2)
    assert not second.done()
    assert not STARTS  # still waiting for the first attempt's thread
    released_at = time.monotonic()
    RELEASE.set()
    outcome = await asyncio.wait_for(second, 3)
    assert outcome.ok
    assert outcome.result == b'"second"'
    assert STARTS[0] >= released_at


async def test_cancel_async() -> None:
    sandbox = await started(f"{DEMO}:sleep")
    running = asyncio.create_task(sandbox.run(task({"seconds": 30}), None))
    await asyncio.sleep(0.05)
    await sandbox.cancel("by the test")
    outcome = await asyncio.wait_for(running, 2)
    assert outcome.error == "cancelled: by the test"
    assert outcome.lingering is None


async def test_cancel_sync_returns_at_once_with_lingering() -> None:
    RELEASE.clear()
    sandbox = await started(f"{HERE}:blocked")
    running = asyncio.create_task(sandbox.run(task(), None))
    await asyncio.sleep(0.05)
    await sandbox.cancel("cancelled by the client")
    outcome = await asyncio.wait_for(running, 1)
    assert outcome.error == "cancelled: cancelled by the client"
    assert outcome.lingering is not None
    RELEASE.set()
    await asyncio.wait_for(outcome.lingering, 3)


async def test_cancel_while_waiting_for_lingering_code() -> None:
    RELEASE.clear()
    sandbox = await started(f"{HERE}:blocked")
    first = await sandbox.run(task(id="first"), 0.05)
    second = asyncio.create_task(sandbox.run(task(id="second"), None))
    await asyncio.sleep(0.05)
    await sandbox.cancel("gone")
    outcome = await asyncio.wait_for(second, 1)
    assert outcome.error == "cancelled: gone"
    assert outcome.lingering is None  # its own code never started
    RELEASE.set()
    assert first.lingering is not None
    await asyncio.wait_for(first.lingering, 3)


async def test_cancel_without_a_running_attempt_is_a_no_op() -> None:
    sandbox = await started(f"{DEMO}:echo")
    await sandbox.cancel("nothing to do")
    assert (await sandbox.run(task(1), None)).ok


async def test_sync_code_does_not_block_the_loop() -> None:
    sandbox = await started(f"{DEMO}:sleep_sync")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    outcome = await sandbox.run(task({"seconds": 0.5}), None)
    ticking.cancel()
    assert outcome.ok
    assert ticks >= 20  # ~50 if the loop were never blocked, 0 if it were


async def test_one_attempt_at_a_time() -> None:
    sandbox = await started(f"{DEMO}:sleep")
    first = asyncio.create_task(sandbox.run(task({"seconds": 0.2}), None))
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="one attempt at a time"):
        await sandbox.run(task(), None)
    assert (await first).ok


async def test_close_cancels_lingering_async_code() -> None:
    sandbox = await started(f"{HERE}:stubborn", cancel_grace_s=0.01)
    outcome = await sandbox.run(task(), 0.05)
    assert outcome.lingering is not None
    sandbox.cancel_grace_s = 2
    await sandbox.close()
    assert not sandbox.busy


async def test_create_sandbox() -> None:
    sandbox = create_sandbox("local", f"{DEMO}:Demo", {"delay_ms": "0"}, cancel_grace_s=0.5)
    assert isinstance(sandbox, LocalSandbox)
    assert sandbox.cancel_grace_s == 0.5
    await sandbox.start()
    assert sandbox.executor.is_async
    assert "local" in known_kinds()


def test_create_sandbox_rejects_unknown_kinds_and_options() -> None:
    with pytest.raises(ConfigError, match=r"unknown sandbox 'vm'; known: .*local"):
        create_sandbox("vm", f"{DEMO}:echo")
    with pytest.raises(ConfigError, match="invalid options for the local sandbox"):
        create_sandbox("local", f"{DEMO}:echo", nonsense=1)


def thread_name_and_id(task: Task) -> list[object]:
    if task.payload:
        time.sleep(float(task.payload))
    return [threading.current_thread().name, threading.get_ident()]


async def test_sync_calls_reuse_one_thread() -> None:
    sandbox = LocalSandbox(f"{HERE}:thread_name_and_id")
    await sandbox.start()
    try:
        first = await sandbox.run(task(None, "a"), None)
        second = await sandbox.run(task(None, "b"), None)
        assert msgspec.json.decode(first.result) == msgspec.json.decode(second.result)
        assert msgspec.json.decode(first.result)[1] != threading.get_ident()
        # a timed-out call keeps its thread (and the pod) busy until it returns;
        # then the thread serves the next task again
        stuck = await sandbox.run(task(0.5, "c"), 0.05)
        assert not stuck.ok and stuck.lingering is not None
        third = await sandbox.run(task(None, "d"), None)
        assert third.ok
        assert msgspec.json.decode(third.result) == msgspec.json.decode(first.result)
    finally:
        await sandbox.close()


# -- inline (mawex worker --sandbox-inline) -------------------------------------------


async def inline_started(ref: str) -> LocalSandbox:
    sandbox = LocalSandbox(ref, inline=True)
    await sandbox.start()
    return sandbox


async def test_inline_runs_a_plain_executor_on_the_loops_thread() -> None:
    sandbox = await inline_started(f"{HERE}:thread_name_and_id")
    try:
        outcome = await sandbox.run(task(), None)
        assert outcome.ok and outcome.lingering is None
        assert msgspec.json.decode(outcome.result)[1] == threading.get_ident()
        assert sandbox._thread is None  # no executor thread was started
    finally:
        await sandbox.close()


async def test_inline_errors_are_failed_outcomes_with_the_users_frames() -> None:
    sandbox = await inline_started(f"{DEMO}:fail")
    outcome = await sandbox.run(task(), None)
    assert not outcome.ok and outcome.error is not None
    first, *rest = outcome.error.splitlines()
    assert first.startswith("RuntimeError: ") and "fails on purpose" in first
    assert any("demo.py" in line for line in rest)
    assert not any("sandbox/local.py" in line for line in rest)
    exits_outcome = await (await inline_started(f"{HERE}:exits")).run(task(), None)
    assert exits_outcome.error is not None and exits_outcome.error.startswith("SystemExit: 3")


async def test_inline_call_past_its_deadline_fails_as_timed_out_when_it_returns() -> None:
    sandbox = await inline_started(f"{HERE}:thread_name_and_id")
    started_at = time.monotonic()
    outcome = await sandbox.run(task(0.2), 0.05)
    assert time.monotonic() - started_at >= 0.2  # the loop waited for the call
    assert not outcome.ok and outcome.error == "timed out after 0.05s"
    assert outcome.lingering is None and not sandbox.busy
    assert (await sandbox.run(task(0.01), 5)).ok  # within its deadline: its value


async def test_inline_leaves_async_code_as_it_was() -> None:
    sandbox = await inline_started(f"{DEMO}:sleep")
    outcome = await sandbox.run(task({"seconds": 10}), 0.05)
    assert not outcome.ok and outcome.error == "timed out after 0.05s"
    outcome = await sandbox.run(task({"seconds": 10}), 1e-9)  # past its deadline at once
    assert not outcome.ok and outcome.error == "timed out after 1e-09s"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}  # its task was not left running
    returning = await inline_started(f"{HERE}:returns_coroutine")
    returned = await returning.run(task(), None)
    assert msgspec.json.decode(returned.result) == "awaited"
    late = await returning.run(task(), 1e-9)  # the coroutine it returned is closed, not run
    assert not late.ok and late.error == "timed out after 1e-09s"


async def test_inline_is_an_option_of_create_sandbox() -> None:
    sandbox = create_sandbox("local", f"{HERE}:thread_name_and_id", None, inline=True)
    await sandbox.start()
    outcome = await sandbox.run(task(), None)
    assert msgspec.json.decode(outcome.result)[1] == threading.get_ident()
    with pytest.raises(ConfigError, match="inline"):
        create_sandbox("forked", f"{DEMO}:echo", None, inline=True)
