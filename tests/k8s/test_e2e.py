"""End to end: a real master, real workers with the k8s sandbox, the simulated cluster.

Tasks go client → master → worker → Job (a local process run by the test kubelet)
→ connect-back → executor → result topic. The last test runs ``mawex worker`` as
a process with its command-line options, kills it with SIGKILL mid-task, and
checks that the restarted worker deletes the Job the dead one left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import mawex
from mawex.local import LocalMaster
from mawex.worker.runner import WorkerPool, build_workers
from tests.k8s.conftest import IMAGE, Cluster
from tests.k8s.sim import REPO
from tests.k8s.test_sandbox import assert_no_leftovers, until

pytestmark = pytest.mark.k8s

MULTI = "tests.k8s.executors:multi"


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[LocalMaster]:
    async with LocalMaster(f"sqlite:///{tmp_path / 'm.db'}?synchronous=normal") as local:
        yield local


def _options(cluster: Cluster, **more: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "image": IMAGE,
        "kubeconfig": str(cluster.kubeconfig),
        "listen": "127.0.0.1:0",
        "poll_interval": 0.1,
        "start_timeout": 30.0,
        "lost_grace": 5.0,
        "request_timeout": 10.0,
    }
    options.update(more)
    return options


async def _pool(
    master: LocalMaster, cluster: Cluster, groups: str, pod: str, **more: Any
) -> WorkerPool:
    pool = build_workers(
        MULTI,
        masters=[master.url],
        groups=groups,
        pod=pod,
        sandbox="k8s",
        sandbox_options=_options(cluster, pod=pod, groups=groups.split(","), **more),
    )
    asyncio.get_running_loop().create_task(pool.run())
    await asyncio.wait_for(pool.wait_connected(), 20)
    return pool


async def test_results_failures_and_the_next_task(master: LocalMaster, cluster: Cluster) -> None:
    pool = await _pool(master, cluster, "heavy", "pod-k", memory_limit="80Mi")
    try:
        async with master.client() as client:
            await client.submit("heavy", {"do": "echo", "n": 1}, id="ok-1")
            await client.submit(
                "heavy", {"do": "hog", "mb": 200, "hold": 20}, id="oom", max_attempts=1
            )
            await client.submit("heavy", {"do": "boom"}, id="boom", max_attempts=2)
            await client.submit("heavy", {"do": "echo", "n": 2}, id="ok-2")
            assert await client.result("heavy", "ok-1", timeout=60) == {"do": "echo", "n": 1}
            with pytest.raises(mawex.TaskFailed) as oom:
                await client.result("heavy", "oom", timeout=60)
            assert "OOMKilled" in str(oom.value.error)
            with pytest.raises(mawex.TaskFailed) as boom:
                await client.result("heavy", "boom", timeout=60)
            assert "ValueError: boom boom" in str(boom.value.error)
            assert len((await client.get("heavy", "boom")).errors or []) == 2
            assert await client.result("heavy", "ok-2", timeout=60) == {"do": "echo", "n": 2}
    finally:
        pool.stop()
    await assert_no_leftovers(cluster)
    assert len(cluster.kubelet.jobs) == 5  # one Job per attempt


async def test_cancel_and_timeout_delete_the_job(master: LocalMaster, cluster: Cluster) -> None:
    pool = await _pool(master, cluster, "heavy", "pod-c")
    try:
        async with master.client() as client:
            await client.submit("heavy", {"do": "sleepy", "s": 60}, id="long")
            await until(lambda: _running(cluster), timeout=30)
            await client.cancel("heavy", "long")
            with pytest.raises(mawex.TaskCancelled):
                await client.result("heavy", "long", timeout=30)
            await assert_no_leftovers(cluster)
            await client.submit(
                "heavy", {"do": "sleepy", "s": 60}, id="slow", timeout_s=1.5, max_attempts=1
            )
            with pytest.raises(mawex.TaskFailed) as slow:
                await client.result("heavy", "slow", timeout=30)
            assert "DeadlineExceeded" in str(slow.value.error) or "timed out" in str(
                slow.value.error
            )
            await assert_no_leftovers(cluster)
            await client.submit("heavy", {"do": "echo"}, id="after")
            assert await client.result("heavy", "after", timeout=30) == {"do": "echo"}
    finally:
        pool.stop()


async def _running(cluster: Cluster) -> bool:
    return bool(cluster.kubelet.running_processes())


async def test_a_pod_runs_one_job_at_a_time(master: LocalMaster, cluster: Cluster) -> None:
    pool = await _pool(master, cluster, "a,b", "pod-shared")
    try:
        async with master.client() as client:
            for i in range(6):
                group = "ab"[i % 2]
                await client.submit(group, {"do": "sleepy", "s": 0.3}, id=f"t{i}")
            for i in range(6):
                assert await client.result("ab"[i % 2], f"t{i}", timeout=90) == "slept"
    finally:
        pool.stop()
    assert cluster.kubelet.max_running == 1
    assert len(cluster.kubelet.jobs) == 6
    await assert_no_leftovers(cluster)


def _worker_process(master: LocalMaster, cluster: Cluster, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MAWEX_K8S_IMAGE": IMAGE,  # options from the environment work too
        "MAWEX_KUBECONFIG": str(cluster.kubeconfig),
    }
    command = [
        sys.executable,
        "-m",
        "mawex",
        "worker",
        MULTI,
        "--master",
        master.url,
        "--group",
        "heavy",
        "--pod",
        "pod-restart",
        "--sandbox",
        "k8s",
        "--k8s-listen",
        "127.0.0.1:0",
        "--advertise-host",
        "127.0.0.1",
        "--k8s-poll-interval",
        "0.1",
        "--k8s-start-timeout",
        "30",
        "--log-format",
        "json",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_restarted_worker_deletes_the_job_of_its_killed_predecessor(
    master: LocalMaster, cluster: Cluster, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    first = _worker_process(master, cluster, log)
    second = None
    try:
        async with master.client() as client:
            await client.submit("heavy", {"do": "sleepy", "s": 4}, id="survivor", max_attempts=3)
            await until(lambda: _running(cluster), timeout=60)
            (leaked,) = [j["metadata"]["name"] for j in await cluster.kubelet.live_jobs()]
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            await asyncio.sleep(0.5)
            assert leaked in {j["metadata"]["name"] for j in await cluster.kubelet.live_jobs()}
            began = time.monotonic()
            second = _worker_process(master, cluster, log)

            async def leaked_gone() -> bool:
                names = {j["metadata"]["name"] for j in await cluster.kubelet.live_jobs()}
                return leaked not in names

            await until(leaked_gone, timeout=60)
            assert time.monotonic() - began < 60
            assert "deleting a Job left by an earlier worker process" in log.read_text()
            # The master retries the attempt the dead worker had: it completes.
            assert await client.result("heavy", "survivor", timeout=90) == "slept"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
    await assert_no_leftovers(cluster)
