"""The forked sandbox through the Sandbox API: results, every failure mode, limits, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mawex.errors import ConfigError, ExecutorLoadError
from mawex.sandbox import Sandbox, create_sandbox, known_kinds
from mawex.sandbox.forked import KEPT_ENV, ForkedSandbox, child_environment, describe_status
from tests.sandbox.conftest import MakeSandbox, alive, descendants_of, task, wait_dead, wait_file
from tests.sandbox.executors import HERE

MODES = ["warm", "spawn"]


def result(outcome: Any) -> Any:
    assert outcome.ok, outcome.error
    return msgspec.json.decode(outcome.result)


def error_of(outcome: Any) -> str:
    assert not outcome.ok, f"expected a failure, got {outcome.result!r}"
    assert outcome.error is not None
    assert outcome.lingering is None
    return str(outcome.error)


# -- construction ----------------------------------------------------------------------


def test_registered_kind() -> None:
    assert "forked" in known_kinds()
    sandbox = create_sandbox("forked", f"{HERE}:echo", {}, mode="spawn", memory_mb=64)
    assert isinstance(sandbox, ForkedSandbox)
    assert isinstance(sandbox, Sandbox)
    assert sandbox.kind == "forked"
    assert not sandbox.warm


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "lukewarm"}, "mode"),
        ({"memory_mb": 0}, "memory"),
        ({"mount_path": "/nonexistent/mawex"}, "not a directory"),
        ({"env": ["=x"]}, "sandbox-env"),
        ({"channel": "pigeon"}, "channel"),
    ],
)
def test_invalid_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_sandbox("forked", f"{HERE}:echo", {}, **options)
    with pytest.raises(ConfigError):
        create_sandbox("forked", f"{HERE}:echo", {}, no_such_option=1)


async def test_run_before_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await ForkedSandbox(f"{HERE}:echo").run(task(), None)


def test_child_environment_is_scrubbed() -> None:
    base = {"PATH": "/bin", "HOME": "/root", "SECRET": "s", "KEEP": "k", "LANG": "C.UTF-8"}
    env = child_environment(["KEEP", "SET=1=2", "ABSENT"], "/data", base=base)
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "KEEP": "k",
        "SET": "1=2",
        "MAWEX_MOUNT_PATH": "/data",
    }


def test_describe_status() -> None:
    assert describe_status(3 << 8) == "exited with code 3"
    assert describe_status(signal.SIGSEGV).startswith("killed by SIGSEGV (")
    assert describe_status(signal.SIGKILL).startswith("killed by SIGKILL")


# -- results -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_each_task_runs_in_a_process_of_its_own(make_sandbox: MakeSandbox, mode: str) -> None:
    sandbox = await make_sandbox(f"{HERE}:whoami", mode=mode)
    assert sandbox.warm is (mode == "warm")
    seen = []
    for attempt in (1, 2, 3):
        where = result(await sandbox.run(task(attempt=attempt), 30))
        assert where["attempt"] == attempt
        assert where["pid"] != os.getpid()
        assert where["ppid"] == sandbox.zygote_pid  # forked by the zygote
        assert where["sid"] == where["pid"] == where["pgid"]  # leads its own session
        assert not alive(where["pid"])  # and is gone once the attempt is over
        seen.append(where["pid"])
    assert len(set(seen)) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_payload_round_trip(make_sandbox: MakeSandbox, mode: str) -> None:
    sandbox = await make_sandbox(f"{HERE}:echo", mode=mode)
    payload = {"text": "héllo ☃", "list": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    assert result(await sandbox.run(task(payload), 30)) == payload


async def test_large_payload_and_result(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:echo", mode="warm")
    payload = {"blob": "x" * (3 * 1024 * 1024), "n": list(range(10000))}
    assert result(await sandbox.run(task(payload), 60)) == payload


async def test_class_executor_is_built_once_in_the_zygote(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:Configured", {"greeting": "hello"}, mode="warm")
    first = result(await sandbox.run(task("world"), 30))
    second = result(await sandbox.run(task("again"), 30))
    assert first["text"] == "hello world!" and second["text"] == "hello again!"
    assert first["built_in"] == second["built_in"] == sandbox.zygote_pid
    assert first["pid"] != second["pid"]


async def test_class_executor_in_spawn_mode_is_built_per_task(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(
        f"{HERE}:Configured", {"greeting": "hi", "punctuation": "?"}, mode="spawn"
    )
    answer = result(await sandbox.run(task("there"), 30))
    assert answer["text"] == "hi there?"
    assert answer["built_in"] == answer["pid"]


async def test_async_executor(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:async_whoami", mode="warm")
    answer = result(await sandbox.run(task({"k": 1}), 30))
    assert answer["payload"] == {"k": 1} and answer["pid"] != os.getpid()


async def test_demo_executors(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox("mawex.examples.demo:Demo", {"delay_ms": "1"})
    assert result(await sandbox.run(task({"a": 2, "b": [3, 4.5]}), 30))["sum"] == 9.5
    error = error_of(await sandbox.run(task({"fail": True}), 30))
    assert error.startswith("ValueError: demo task t1 asked to fail")


@pytest.mark.parametrize("mode", MODES)
async def test_load_error_at_start(make_sandbox: MakeSandbox, mode: str) -> None:
    with pytest.raises(ExecutorLoadError, match="no module named 'no_such_module_x'"):
        await make_sandbox("no_such_module_x:run", mode=mode)
    with pytest.raises(ExecutorLoadError, match="has no attribute 'nope'"):
        await make_sandbox(f"{HERE}:nope", mode=mode)
    with pytest.raises(ExecutorLoadError, match="cannot build executor"):
        await make_sandbox(f"{HERE}:Configured", {"wrong": "x"}, mode=mode)


# -- failure modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_exception_gives_type_message_traceback_and_output(
    make_sandbox: MakeSandbox, mode: str
) -> None:
    sandbox = await make_sandbox(f"{HERE}:raises", mode=mode)
    error = error_of(await sandbox.run(task(), 30))
    first, *rest = error.splitlines()
    assert first == "ValueError: bad input for t1"
    assert any("executors.py" in line and "raises" in line for line in rest)  # the traceback
    assert not any("mawex/sandbox" in line for line in rest)  # not our frames
    assert "about to fail" in error  # the process's output


@pytest.mark.parametrize("mode", MODES)
async def test_os_exit(make_sandbox: MakeSandbox, mode: str) -> None:
    sandbox = await make_sandbox(f"{HERE}:exits_3", mode=mode)
    error = error_of(await sandbox.run(task(), 30))
    assert "exited with code 3 before reporting a result" in error.splitlines()[0]
    assert "leaving with 3" in error


async def test_system_exit_is_a_task_error(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:system_exit")
    assert error_of(await sandbox.run(task(), 30)).startswith("SystemExit: 7")


@pytest.mark.parametrize("mode", MODES)
async def test_segfault(make_sandbox: MakeSandbox, mode: str) -> None:
    sandbox = await make_sandbox(f"{HERE}:segfault", mode=mode)
    error = error_of(await sandbox.run(task(), 30))
    assert "killed by SIGSEGV" in error.splitlines()[0]
    assert "about to crash" in error
    # faulthandler's dump: the Python traceback of the crash
    assert "Segmentation fault" in error
    assert 'executors.py", line' in error and "in segfault" in error
    # the worker (this process) is fine and the sandbox serves the next task
    assert error_of(await sandbox.run(task(), 30)).startswith("the executor process")


async def test_sigkill_and_abort(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:kills_itself")
    error = error_of(await sandbox.run(task(), 30))
    assert "killed by SIGKILL" in error and "OOM killer" in error
    sandbox = await make_sandbox(f"{HERE}:aborts")
    assert "killed by SIGABRT" in error_of(await sandbox.run(task(), 30))


async def test_result_that_is_not_json(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:not_json")
    assert error_of(await sandbox.run(task(), 30)).startswith("result is not JSON-serialisable")


async def test_output_in_errors_is_bounded(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:chatty", output_limit=1000)
    error = error_of(await sandbox.run(task(), 30))
    assert error.startswith("RuntimeError: chatty failed")
    assert "the last words" in error
    assert "earlier bytes]" in error
    assert len(error) < 4096 + 1000 + 200


async def test_a_thread_left_running_does_not_keep_the_process(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:lingering_thread", exit_grace_s=5)
    started = time.monotonic()
    assert result(await sandbox.run(task(), 30)) == "done"
    assert time.monotonic() - started < 4  # not the exit grace: the process ended at once


# -- timeouts, cancel, process groups ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_timeout_kills_an_infinite_loop(
    make_sandbox: MakeSandbox, mode: str, tmp_path: Path
) -> None:
    sandbox = await make_sandbox(f"{HERE}:spins", mode=mode)
    pid_file = tmp_path / "pid"
    timeout = 0.5 if mode == "warm" else 5.0  # a fresh interpreter needs time to start
    outcome = await sandbox.run(task({"pid_file": str(pid_file)}), timeout)
    error = error_of(outcome)
    assert error == f"timed out after {timeout:g}s: the executor's process group was killed"
    assert not wait_dead([int(pid_file.read_text())])


@pytest.mark.parametrize("mode", MODES)
async def test_timeout_kills_the_whole_process_group(
    make_sandbox: MakeSandbox, mode: str, tmp_path: Path
) -> None:
    sandbox = await make_sandbox(f"{HERE}:spawns_grandchild", mode=mode)
    pid_file = tmp_path / "grandchild"
    run = asyncio.ensure_future(sandbox.run(task({"pid_file": str(pid_file)}), 8))
    grandchild = int(await wait_file(pid_file))
    child = sandbox.running_pid
    assert child is not None and alive(child) and alive(grandchild)
    assert os.getpgid(grandchild) == child  # the grandchild is in the child's group
    error = error_of(await run)
    assert error.startswith("timed out after 8s")
    assert not wait_dead([child, grandchild])


async def test_cancel_kills_the_process_group(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sandbox = await make_sandbox(f"{HERE}:spawns_grandchild")
    pid_file = tmp_path / "grandchild"
    run = asyncio.ensure_future(sandbox.run(task({"pid_file": str(pid_file)}), None))
    grandchild = int(await wait_file(pid_file))
    child = sandbox.running_pid
    assert child is not None
    await sandbox.cancel("cancelled by the test")
    assert error_of(await run) == "cancelled: cancelled by the test"
    assert not wait_dead([child, grandchild])
    await sandbox.cancel("nothing runs: a no-op")


async def test_what_a_task_leaves_behind_is_killed(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sandbox = await make_sandbox(f"{HERE}:spawns_grandchild")
    pid_file = tmp_path / "grandchild"
    outcome = await sandbox.run(task({"pid_file": str(pid_file), "return": True}), 30)
    assert outcome.ok
    assert not wait_dead([int(pid_file.read_text())])


async def test_close_kills_the_running_task_and_leaves_no_process(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sandbox = await make_sandbox(f"{HERE}:spawns_grandchild")
    pid_file = tmp_path / "grandchild"
    run = asyncio.ensure_future(sandbox.run(task({"pid_file": str(pid_file)}), None))
    grandchild = int(await wait_file(pid_file))
    child = sandbox.running_pid
    zygote = sandbox.zygote_pid
    assert child is not None and zygote is not None
    family = descendants_of(zygote)
    assert {child, grandchild} <= set(family)
    await sandbox.close()
    assert error_of(await run) == "cancelled: sandbox closed"
    assert not wait_dead([zygote, *family])


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_memory_limit(make_sandbox: MakeSandbox, mode: str) -> None:
    sandbox = await make_sandbox(f"{HERE}:hogs_memory", mode=mode, memory_mb=300)
    assert result(await sandbox.run(task({"mb": 20}), 30)) == 20
    error = error_of(await sandbox.run(task({"mb": 2000}), 30))
    assert error.startswith("memory limit of 300 MB exceeded: MemoryError")
    assert "hogs_memory" in error
    assert result(await sandbox.run(task({"mb": 20}), 30)) == 20  # and the next task is fine


# -- environment and files ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_environment_is_scrubbed_except_what_is_passed(
    make_sandbox: MakeSandbox, mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAWEX_TEST_SECRET", "do not leak")
    monkeypatch.setenv("MAWEX_TEST_PASSED", "passed through")
    sandbox = await make_sandbox(
        f"{HERE}:whoami",
        mode=mode,
        env=["MAWEX_TEST_PASSED", "MAWEX_TEST_SET=set=here", "MAWEX_TEST_ABSENT"],
        mount_path=tmp_path,
    )
    env = result(await sandbox.run(task(), 30))["env"]
    assert env["MAWEX_TEST_PASSED"] == "passed through"
    assert env["MAWEX_TEST_SET"] == "set=here"
    assert env["MAWEX_MOUNT_PATH"] == str(tmp_path)
    assert "MAWEX_TEST_SECRET" not in env and "MAWEX_TEST_ABSENT" not in env
    allowed = {*KEPT_ENV, "MAWEX_TEST_PASSED", "MAWEX_TEST_SET", "MAWEX_MOUNT_PATH", "LC_CTYPE"}
    assert set(env) <= allowed, set(env) - allowed
    for name in KEPT_ENV:
        assert env.get(name) == os.environ.get(name)


@pytest.mark.parametrize("mode", MODES)
async def test_mount_path(make_sandbox: MakeSandbox, mode: str, tmp_path: Path) -> None:
    (tmp_path / "config.txt").write_text("mounted config")
    sandbox = await make_sandbox(f"{HERE}:reads_mount", mode=mode, mount_path=tmp_path)
    answer = result(await sandbox.run(task(), 30))
    assert answer == {"env": "mounted config", "cwd": "mounted config", "dir": str(tmp_path)}


# -- the zygote -----------------------------------------------------------------------------------


async def test_zygote_dying_mid_task_fails_the_attempt_and_is_restarted(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sandbox = await make_sandbox(f"{HERE}:sleeps")
    zygote = sandbox.zygote_pid
    assert zygote is not None
    pid_file = tmp_path / "pid"
    run = asyncio.ensure_future(sandbox.run(task({"pid_file": str(pid_file)}), 60))
    child = int(await wait_file(pid_file))
    os.kill(zygote, signal.SIGKILL)
    error = error_of(await asyncio.wait_for(run, 20))
    assert error.startswith("the sandbox's zygote process killed by SIGKILL")
    assert "while the task ran" in error
    assert not wait_dead([child, zygote])
    # the next attempt gets a new zygote
    assert result(await sandbox.run(task({"seconds": 0}), 30)) == {"slept": 0.0}
    assert sandbox.zygote_pid not in (None, zygote)


async def test_zygote_dying_between_tasks_is_restarted(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:echo")
    zygote = sandbox.zygote_pid
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    assert not wait_dead([zygote])
    assert result(await sandbox.run(task("after"), 30)) == "after"
    assert sandbox.zygote_pid not in (None, zygote)


async def test_auto_mode_spawns_when_loading_starts_threads(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(f"{HERE}:StartsThreads", mode="auto")
    assert not sandbox.warm
    answer = result(await sandbox.run(task(), 30))
    assert answer["ppid"] == sandbox.zygote_pid
    plain = await make_sandbox(f"{HERE}:echo", mode="auto")
    assert plain.warm


@pytest.mark.parametrize("mode", MODES)
async def test_websocket_channel(make_sandbox: MakeSandbox, mode: str) -> None:
    """The children can also connect back over the WebSocket server (the k8s sandbox's path)."""
    sandbox = await make_sandbox(f"{HERE}:raises", mode=mode, channel="ws")
    assert error_of(await sandbox.run(task(), 30)).startswith("ValueError: bad input for t1")
    sandbox = await make_sandbox(f"{HERE}:echo", mode=mode, channel="ws")
    assert result(await sandbox.run(task([1, 2]), 30)) == [1, 2]


# -- the worker's own death ----------------------------------------------------------------------

WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from mawex.model import Task
    from mawex.sandbox.forked import ForkedSandbox

    async def main(mode, pid_file):
        sandbox = ForkedSandbox("tests.sandbox.executors:spawns_grandchild", mode=mode)
        await sandbox.start()
        print(sandbox.zygote_pid, flush=True)
        await sandbox.run(Task(id="t", group="g", payload={"pid_file": pid_file}), None)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.parametrize("mode", MODES)
async def test_no_orphans_when_the_worker_is_killed(mode: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER_SCRIPT, mode, str(pid_file), stdout=subprocess.PIPE
    )
    try:
        assert worker.stdout is not None
        zygote = int(await asyncio.wait_for(worker.stdout.readline(), 60))
        grandchild = int(await wait_file(pid_file, timeout=60))
        family = descendants_of(worker.pid)
        assert zygote in family and grandchild in family
        worker.kill()  # SIGKILL: no cleanup code of the worker runs
        await asyncio.wait_for(worker.wait(), 10)
        assert not wait_dead(family), "processes survived their worker"
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
