"""The k8s sandbox against the simulated cluster: the real client, connect-back and executor.

Each test starts a :class:`~mawex.sandbox.k8s.K8sSandbox` configured by a
kubeconfig that points at KMock; the test kubelet runs each Job's container
command (``mawex executor --connect URL``) as a local process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mawex.errors import ConfigError, ExecutorLoadError
from mawex.model import Task
from mawex.sandbox.k8s import K8sSandbox
from mawex.sandbox.k8s_api import ClientSettings, connect
from mawex.sandbox.k8s_manifest import LABEL_INSTANCE, LABEL_POD, LABEL_WORKER
from tests.k8s.conftest import IMAGE, Cluster, write_kubeconfig

pytestmark = pytest.mark.k8s

EXECUTORS = "tests.k8s.executors"

#: A throw-away self-signed CA certificate (no key kept): the in-cluster loader
#: builds an SSL context from the service account's ca.crt.
TEST_CA = """\
-----BEGIN CERTIFICATE-----
MIIBhjCCAS2gAwIBAgIULLaMEYi8Agt0NeummMhlq9/mVtwwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNbWF3ZXgtdGVzdC1jYTAgFw0yNjExMjcyMjU3MDFaGA8yMTI2
MTEwMzIyNTcwMVowGDEWMBQGA1UEAwwNbWF3ZXgtdGVzdC1jYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABDz3aLFTuRn3lZiT9FgH5IjC6s/ztkftrTRQL4Pr/O39
ktSbzwxtszvujeswKRmb9H1YidQdCSPaXIqR0KRJtW6jUzBRMB0GA1UdDgQWBBQk
F2EuCl1rXT0zMcGcHySHJ7u9ADAfBgNVHSMEGDAWgBQkF2EuCl1rXT0zMcGcHySH
J7u9ADAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIBYRXB5UOthJ
tExK/yVBtfdUij3xWi8nqgAXO3OKKd/kAiBTuyaPGmnMadNX4VfUqU9bk0ywYblj
pwqeC1iDAu0IQw==
-----END CERTIFICATE-----
"""


@asynccontextmanager
async def started(sandbox: K8sSandbox) -> AsyncIterator[K8sSandbox]:
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.close()


def task(payload: Any = None, id: str = "t1", group: str = "g", attempt: int = 1) -> Task:
    return Task(id=id, group=group, payload=payload, attempt=attempt)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until ``check()`` is true (the simulation is asynchronous)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def assert_no_leftovers(cluster: Cluster) -> None:
    """No Job, no pod and no container process survive the attempt."""
    await until(lambda: _empty(cluster))
    assert cluster.kubelet.running_processes() == []


async def _empty(cluster: Cluster) -> bool:
    jobs = await cluster.kubelet.live_jobs()
    pods = await cluster.kubelet.live_pods()
    return not jobs and not pods and not cluster.kubelet.running_processes()


async def test_runs_tasks_as_jobs_and_deletes_them(cluster: Cluster) -> None:
    sandbox = cluster.sandbox(f"{EXECUTORS}:Greeter", args={"greeting": "hi"})
    async with started(sandbox):
        first = await sandbox.run(task("ann", id="t-1"), 30)
        second = await sandbox.run(task("bob", id="t/2", attempt=3), None)
    assert first.ok and first.result == b'"hi ann"'
    assert second.ok and second.result == b'"hi bob"'
    await assert_no_leftovers(cluster)
    jobs = {
        job.metadata["annotations"]["mawex.io/task"]: job for job in cluster.kubelet.jobs.values()
    }
    one, two = jobs["t-1"], jobs["t/2"]
    labels = two.metadata["labels"]
    assert labels[LABEL_WORKER] == "pod-a.g" and labels[LABEL_POD] == "pod-a"
    assert labels["mawex.io/attempt"] == "3" and labels["mawex.io/group"] == "g"
    assert labels["mawex.io/task"].startswith("t-2-")  # sanitised, hashed: "/" is not allowed
    assert one.spec["activeDeadlineSeconds"] == 30 and "activeDeadlineSeconds" not in two.spec
    assert one.spec["backoffLimit"] == 0
    pod = one.spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["command"][:3] == ["mawex", "executor", "--connect"]
    assert container["command"][3].startswith("ws://127.0.0.1:")
    assert one.history[0] == "created" and "running" in one.history


async def test_executor_errors_come_back_with_their_traceback(cluster: Cluster) -> None:
    async with started(cluster.sandbox(f"{EXECUTORS}:boom")) as sandbox:
        outcome = await sandbox.run(task(id="b1"), 30)
        after = await sandbox.run(task({"ok": 1}, id="b2"), 30)
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith("ValueError: boom b1")
    assert "executors.py" in outcome.error
    assert not after.ok  # the same executor: still failing, but the sandbox keeps serving
    await assert_no_leftovers(cluster)


async def test_container_exit_without_result_reports_exit_code_and_log(cluster: Cluster) -> None:
    async with started(cluster.sandbox(f"{EXECUTORS}:crash")) as sandbox:
        outcome = await sandbox.run(task(), 30)
    assert not outcome.ok and outcome.error is not None
    assert "BackoffLimitExceeded" in outcome.error
    assert "exit code 7" in outcome.error
    assert "connection" in outcome.error  # the executor's channel was lost
    await assert_no_leftovers(cluster)


async def test_a_lost_executor_waits_for_the_jobs_own_verdict(cluster: Cluster) -> None:
    """The pod's failure shows before the Job controller marks the Job: the error still
    names the Job's reason, not only the pod's exit."""
    cluster.kubelet.verdict_delay = 1.0
    async with started(cluster.sandbox(f"{EXECUTORS}:crash")) as sandbox:
        outcome = await sandbox.run(task(), 30)
    assert not outcome.ok and outcome.error is not None
    assert "BackoffLimitExceeded" in outcome.error and "exit code 7" in outcome.error
    await assert_no_leftovers(cluster)


async def test_image_pull_failure_fails_fast_with_the_reason(cluster: Cluster) -> None:
    sandbox = cluster.sandbox(image="registry.invalid/nope:1", start_timeout=30)
    async with started(sandbox):
        began = time.monotonic()
        outcome = await sandbox.run(task(), 30)
        took = time.monotonic() - began
    assert not outcome.ok and outcome.error is not None
    assert "ErrImagePull" in outcome.error or "ImagePullBackOff" in outcome.error
    assert "registry.invalid/nope:1" in outcome.error
    assert took < 10  # not the 30 s start timeout
    await assert_no_leftovers(cluster)


async def test_oom_killed(cluster: Cluster) -> None:
    sandbox = cluster.sandbox(f"{EXECUTORS}:hog", memory_limit="80Mi", memory_request="32Mi")
    async with started(sandbox):
        outcome = await sandbox.run(task({"mb": 200, "hold": 20}), 60)
        after = await sandbox.run(task({"mb": 1, "hold": 0}, id="small"), 60)
    assert not outcome.ok and outcome.error is not None
    assert "OOMKilled" in outcome.error and "exit code 137" in outcome.error
    assert after.ok and after.result == b"1"
    job = next(j for j in cluster.kubelet.jobs.values() if j.memory_limit)
    resources = job.spec["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"memory": "32Mi"}, "limits": {"memory": "80Mi"}}
    await assert_no_leftovers(cluster)


async def test_deadline_exceeded_is_reported_by_kubernetes(cluster: Cluster) -> None:
    async with started(cluster.sandbox(f"{EXECUTORS}:sleepy")) as sandbox:
        outcome = await sandbox.run(task({"s": 60}), 1.5)
    assert not outcome.ok and outcome.error is not None
    assert "DeadlineExceeded" in outcome.error
    assert "Job was active longer than specified deadline" in outcome.error
    assert any("deadline" in j.history for j in cluster.kubelet.jobs.values())
    await assert_no_leftovers(cluster)


async def test_worker_enforces_the_timeout_when_kubernetes_does_not(cluster: Cluster) -> None:
    cluster.kubelet.enforce_deadlines = False
    sandbox = cluster.sandbox(f"{EXECUTORS}:sleepy", deadline_grace=0.5)
    async with started(sandbox):
        began = time.monotonic()
        outcome = await sandbox.run(task({"s": 60}), 1)
        took = time.monotonic() - began
    assert not outcome.ok and outcome.error is not None
    assert outcome.error.startswith("timed out after 1s")
    assert took < 8
    await assert_no_leftovers(cluster)


def _is(method: str, resource: str, name: bool | None = None) -> Callable[[Any], bool]:
    def check(request: Any) -> bool:
        ok = str(request.method).upper().endswith(method) and request.resource is not None
        ok = ok and request.resource.plural == resource and request.subresource is None
        if name is not None:
            ok = ok and (request.name is not None) == name
        return bool(ok)

    return check


async def test_api_5xx_is_retried(cluster: Cluster) -> None:
    create = cluster.api.inject(_is("POST", "jobs"), times=2, status=503)
    read = cluster.api.inject(_is("GET", "jobs", name=True), times=3, status=500)
    pods = cluster.api.inject(_is("GET", "pods", name=False), times=2, status=429)
    delete = cluster.api.inject(_is("DELETE", "jobs"), times=1, status=503)
    # the task lasts long enough for the sandbox to read the Job's status while it runs
    sandbox_options = {"executor": "tests.k8s.executors:multi", "api_retries": 4}
    async with started(cluster.sandbox(**sandbox_options)) as sandbox:
        outcome = await sandbox.run(task({"do": "sleepy", "s": 1.0}), 30)
    assert outcome.ok, outcome.error
    assert (create.hits, read.hits, delete.hits) == (2, 3, 1)
    assert pods.hits >= 1
    await assert_no_leftovers(cluster)


async def test_create_failing_after_the_job_was_stored_adopts_that_job(cluster: Cluster) -> None:
    # The API server stored the Job but the response failed: the retry meets 409
    # AlreadyExists and takes the Job as its own (names are unique per attempt).
    create = cluster.api.inject(_is("POST", "jobs"), times=1, status=504, stored=True)
    async with started(cluster.sandbox()) as sandbox:
        outcome = await sandbox.run(task({"n": 2}), 30)
    assert outcome.ok, outcome.error
    assert create.hits == 1 and len(cluster.kubelet.jobs) == 1
    await assert_no_leftovers(cluster)


async def test_api_down_fails_the_attempt_and_leaks_nothing(cluster: Cluster) -> None:
    async with started(cluster.sandbox(api_retries=1)) as sandbox:
        cluster.api.inject(_is("POST", "jobs"), times=10, status=503)
        outcome = await sandbox.run(task(), 30)
        assert not outcome.ok and outcome.error is not None
        assert "cannot create Job" in outcome.error and "503" in outcome.error
        assert "after 2 tries" in outcome.error
    await assert_no_leftovers(cluster)


async def _running_job(cluster: Cluster) -> str:
    async def running() -> bool:
        return any(j.phase == "Running" and not j.finished for j in cluster.kubelet.jobs.values())

    await until(running)
    return next(name for name, j in cluster.kubelet.jobs.items() if not j.finished)


async def test_job_deleted_externally_fails_the_attempt(cluster: Cluster) -> None:
    async with started(cluster.sandbox(f"{EXECUTORS}:sleepy")) as sandbox:
        attempt = asyncio.create_task(sandbox.run(task({"s": 60}), 60))
        name = await _running_job(cluster)
        await asyncio.sleep(0.5)  # let the executor connect and start the task
        await cluster.kubelet._request("DELETE", f"/apis/batch/v1/namespaces/default/jobs/{name}")
        outcome = await asyncio.wait_for(attempt, 30)
    assert not outcome.ok and outcome.error is not None
    assert f"Job {name} was deleted" in outcome.error
    await assert_no_leftovers(cluster)


async def test_never_scheduled_job_hits_the_start_timeout(cluster: Cluster) -> None:
    sandbox = cluster.sandbox(cpu_request="64", start_timeout=1.5)
    async with started(sandbox):
        outcome = await sandbox.run(task(), 30)
    assert not outcome.ok and outcome.error is not None
    assert "did not start within 1.5s (Unschedulable)" in outcome.error
    assert "0/1 nodes are available: 1 Insufficient cpu." in outcome.error
    await assert_no_leftovers(cluster)


async def test_cancel_deletes_the_job_and_kills_the_container(cluster: Cluster) -> None:
    async with started(cluster.sandbox(f"{EXECUTORS}:sleepy")) as sandbox:
        attempt = asyncio.create_task(sandbox.run(task({"s": 60}), 60))
        await _running_job(cluster)
        await asyncio.sleep(0.3)
        await sandbox.cancel("cancelled by the user")
        outcome = await asyncio.wait_for(attempt, 15)
        assert outcome == type(outcome).failure("cancelled: cancelled by the user")
        await assert_no_leftovers(cluster)
        assert (await sandbox.run(task({"s": 0}, id="t2"), 30)).ok


async def test_closing_the_sandbox_mid_task_deletes_the_job(cluster: Cluster) -> None:
    sandbox = cluster.sandbox(f"{EXECUTORS}:sleepy")
    await sandbox.start()
    attempt = asyncio.create_task(sandbox.run(task({"s": 60}), 60))
    await _running_job(cluster)
    attempt.cancel()  # what a worker's teardown does to a running attempt
    with pytest.raises(asyncio.CancelledError):
        await attempt
    await sandbox.close()
    await assert_no_leftovers(cluster)


async def _leftover(cluster: Cluster, name: str, labels: dict[str, str]) -> None:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "executor", "image": IMAGE, "command": ["sleep", "300"]}
                    ],
                },
            },
        },
    }
    await cluster.create("/apis/batch/v1/namespaces/default/jobs", body)


async def test_restart_deletes_jobs_left_by_an_earlier_process(cluster: Cluster) -> None:
    base = {"app.kubernetes.io/managed-by": "mawex", LABEL_POD: "pod-a"}
    await _leftover(cluster, "ours", {**base, LABEL_WORKER: "pod-a.g", LABEL_INSTANCE: "dead1"})
    await _leftover(cluster, "other-group", {**base, LABEL_WORKER: "pod-a.h", LABEL_INSTANCE: "x"})
    other_pod = {**base, LABEL_POD: "pod-b", LABEL_WORKER: "pod-b.g", LABEL_INSTANCE: "dead2"}
    await _leftover(cluster, "other-pod", other_pod)
    await until(lambda: _count_running(cluster, 3))

    sandbox = cluster.sandbox(instance="alive")
    async with started(sandbox):
        names = {job["metadata"]["name"] for job in await cluster.kubelet.live_jobs()}
        assert names == {"other-group", "other-pod"}
        # A sibling sandbox of the same process (same instance) keeps its Jobs.
        sibling = cluster.sandbox(f"{EXECUTORS}:sleepy", instance="alive")
        async with started(sibling):
            attempt = asyncio.create_task(sibling.run(task({"s": 2}, id="keep"), 30))
            await _running_job(cluster)
            again = cluster.sandbox(instance="alive")
            await again.start()
            await again.close()
            assert (await asyncio.wait_for(attempt, 30)).ok
    await until(lambda: _gone(cluster, "ours"))


async def _count_running(cluster: Cluster, n: int) -> bool:
    return len(cluster.kubelet.running_processes()) == n


async def _gone(cluster: Cluster, name: str) -> bool:
    return cluster.kubelet.jobs[name].finished and name not in {
        job["metadata"]["name"] for job in await cluster.kubelet.live_jobs()
    }


async def test_env_and_configmap_reach_the_executor(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_WORKER", "copied")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    await cluster.create(
        "/api/v1/namespaces/default/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mawex-config"},
            "data": {"settings.json": '{"x": 1}', "mode": "fast"},
        },
    )
    mount = tmp_path / "mounted"
    sandbox = cluster.sandbox(
        f"{EXECUTORS}:environment",
        env=["FROM_WORKER", "LITERAL=value=with=equals", "NOT_SET_ANYWHERE"],
        configmap="mawex-config",
        mount_path=str(mount),
    )
    async with started(sandbox):
        names = ["FROM_WORKER", "LITERAL", "NOT_SET_ANYWHERE", "MAWEX_TOKEN"]
        outcome = await sandbox.run(task({"names": names}), 30)
    assert outcome.ok, outcome.error
    import json

    result = json.loads(outcome.result)
    assert result["env"] == {
        "FROM_WORKER": "copied",
        "LITERAL": "value=with=equals",
        "NOT_SET_ANYWHERE": None,
        "MAWEX_TOKEN": None,  # nothing of the worker's environment leaks unasked
    }
    assert result["mount"] == str(mount)
    assert result["files"] == {"mode": "fast", "settings.json": '{"x": 1}'}


async def test_start_fails_clearly_when_the_api_is_unreachable(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    sandbox = K8sSandbox(
        "tests.k8s.executors:echo",
        image=IMAGE,
        kubeconfig=str(kubeconfig),
        listen="127.0.0.1:0",
        api_retries=1,
        request_timeout=2,
    )
    with pytest.raises(ConfigError, match="cannot list Jobs in namespace 'default'"):
        await sandbox.start()
    await sandbox.close()


async def test_busy_connect_back_port_is_a_config_error(cluster: Cluster) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sandbox = cluster.sandbox(listen=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match="--k8s-listen"):
            await sandbox.start()
        await sandbox.close()


async def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an image"):
        K8sSandbox("m:f")
    with pytest.raises(ConfigError, match="listen address"):
        K8sSandbox("m:f", image=IMAGE, listen="nowhere:port")
    sandbox = K8sSandbox("not a ref", image=IMAGE, kubeconfig=str(tmp_path / "none"))
    with pytest.raises(ExecutorLoadError):
        await sandbox.start()
    sandbox = K8sSandbox("m:f", image=IMAGE, kubeconfig=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="kubeconfig"):
        await sandbox.start()


async def test_kubeconfig_context_namespace(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1234", namespace="batch-ns")
    client, namespace = await connect(ClientSettings(kubeconfig=str(path)))
    try:
        assert namespace == "batch-ns"
        assert client.configuration.host == "http://127.0.0.1:1234"
    finally:
        await client.close()


async def test_in_cluster_service_account(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_text(TEST_CA)
    (sa / "namespace").write_text("jobs-ns\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    settings = ClientSettings(service_account_dir=str(sa), environ=environ)
    client, namespace = await connect(settings)
    try:
        assert namespace == "jobs-ns"
        assert client.configuration.host == "https://10.0.0.1:443"
        assert client.configuration.api_key["BearerToken"] == "Bearer sa-token"
        assert client.configuration.ssl_ca_cert == str(sa / "ca.crt")
    finally:
        await client.close()
    with pytest.raises(ConfigError, match="in-cluster"):
        await connect(ClientSettings(in_cluster=True, service_account_dir=str(tmp_path)))
