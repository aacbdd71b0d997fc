"""Unit tests of the k8s sandbox's pure parts: names, labels, the Job manifest, status reading."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from mawex.sandbox.k8s import parse_env, parse_listen
from mawex.sandbox.k8s_manifest import (
    JobPhase,
    JobSettings,
    build_job,
    cleanup_selector,
    job_labels,
    job_name,
    label_value,
    read_state,
    worker_identity,
)
from tests.k8s.sim import matches_labels

pytestmark = pytest.mark.k8s

K8S_VERSION = "1.30.0"
LABEL_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    "value",
    ["g", "pod-a", "A.b_c-d", "x" * 63, "x" * 64, "a/b", "-lead", "trail.", "é", "a b", ""],
)
def test_label_values_are_valid_and_distinct(value: str) -> None:
    label = label_value(value)
    assert len(label) <= 63 and LABEL_RE.match(label)
    if LABEL_RE.match(value) and len(value) <= 63:
        assert label == value
    else:
        assert label != label_value(value + "!")  # a hash keeps near-misses apart


def test_job_names_are_dns_labels_unique_per_attempt() -> None:
    long_id = "Task_With.Dots/and/slashes-" + "z" * 80
    names = {
        job_name("G", long_id, 1, "aaaaaa"),
        job_name("G", long_id, 2, "aaaaaa"),
        job_name("G", long_id + "y", 1, "aaaaaa"),
        job_name("g", "t", 1, "bbbbbb"),
        job_name("..", "__", 1, "cccccc"),
    }
    assert len(names) == 5
    for name in names:
        assert len(name) <= 63 and DNS_LABEL_RE.match(name), name
        assert name.startswith("mawex")


def test_cleanup_selector_picks_only_leftovers_of_this_identity() -> None:
    selector = cleanup_selector("pod-a", ["g", "h"], "me")
    ours = job_labels(pod="pod-a", group="g", task_id="t", attempt=1, instance="old")
    assert matches_labels(selector, ours)
    assert matches_labels(selector, {**ours, "mawex.io/worker": worker_identity("pod-a", "h")})
    assert not matches_labels(selector, {**ours, "mawex.io/instance": "me"})
    assert not matches_labels(selector, {**ours, "mawex.io/worker": "pod-a.other"})
    assert not matches_labels(selector, {**ours, "mawex.io/pod": "pod-b"})
    assert matches_labels(cleanup_selector("pod-a", None, "me"), ours)


def test_parse_listen_and_env() -> None:
    assert parse_listen("0.0.0.0:7071") == ("0.0.0.0", 7071)
    assert parse_listen(":7071") == ("0.0.0.0", 7071)
    assert parse_listen("7071") == ("0.0.0.0", 7071)
    assert parse_listen("[::1]:0") == ("::1", 0)
    env = parse_env(["A", "B=x=y", "C="], {"A": "1"})
    assert env == {"A": "1", "B": "x=y", "C": ""}
    assert parse_env(["MISSING"], {}) == {}
    from mawex.errors import ConfigError

    for bad in ("0.0.0.0:http", "h:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    with pytest.raises(ConfigError):
        parse_env(["=x"], {})


def _job(settings: JobSettings, timeout: float | None = 90.5) -> dict[str, Any]:
    labels = job_labels(pod="worker-7d9f", group="heavy", task_id="t/1", attempt=2, instance="i")
    return build_job(
        settings,
        name=job_name("heavy", "t/1", 2, "abcdef"),
        connect_url="ws://10.1.2.3:7071/v1/executor?secret=s3cr3t",
        labels=labels,
        annotations={"mawex.io/group": "heavy", "mawex.io/task": "t/1"},
        timeout_s=timeout,
    )


def test_full_job_manifest_is_schema_valid_and_complete() -> None:
    settings = JobSettings(
        image="ghcr.io/example/mawex:0.1.0",
        cpu_request="500m",
        cpu_limit="2",
        memory_request="1Gi",
        memory_limit="2Gi",
        env={"LOG_LEVEL": "debug"},
        configmap="mawex-task-config",
        mount_path="/etc/mawex",
        service_account="runner",
        image_pull_policy="IfNotPresent",
    )
    job = _job(settings)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 91
    assert spec["ttlSecondsAfterFinished"] == 600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "runner"
    assert pod["automountServiceAccountToken"] is False
    assert pod["volumes"] == [{"name": "mawex-config", "configMap": {"name": "mawex-task-config"}}]
    (container,) = pod["containers"]
    assert container["command"] == [
        "mawex",
        "executor",
        "--connect",
        "ws://10.1.2.3:7071/v1/executor?secret=s3cr3t",
    ]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert container["env"] == [
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "MAWEX_MOUNT_PATH", "value": "/etc/mawex"},
    ]
    assert container["volumeMounts"] == [
        {"name": "mawex-config", "mountPath": "/etc/mawex", "readOnly": True}
    ]
    assert job["metadata"]["labels"] == spec["template"]["metadata"]["labels"]
    assert job["metadata"]["labels"]["mawex.io/worker"] == "worker-7d9f.heavy"


def test_minimal_job_manifest_is_schema_valid() -> None:
    job = _job(JobSettings(image="busybox", ttl_after_finished_s=None), timeout=None)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert "activeDeadlineSeconds" not in job["spec"]
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "resources" not in job["spec"]["template"]["spec"]["containers"][0]


# -- reading status -------------------------------------------------------------------

JOB = {"metadata": {"name": "j"}, "status": {"active": 1}}


def _pod(phase: str, state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"phase": phase, **status}
    if state is not None:
        body["containerStatuses"] = [{"name": "executor", "state": state}]
    return {
        "metadata": {"name": "j-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": body,
    }


def _failed_job(reason: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "j"},
        "status": {
            "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": reason},
                {"type": "Failed", "status": "True", "reason": reason, "message": message},
            ],
        },
    }


@pytest.mark.parametrize(
    ("job", "pods", "phase", "reason", "words"),
    [
        (None, [], JobPhase.GONE, "Deleted", ["deleted"]),
        (JOB, [], JobPhase.PENDING, None, ["no pod"]),
        (
            JOB,
            [
                _pod(
                    "Pending",
                    conditions=[
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient memory.",
                        }
                    ],
                )
            ],
            JobPhase.PENDING,
            "Unschedulable",
            ["not scheduled", "Insufficient memory"],
        ),
        (
            JOB,
            [_pod("Pending", {"waiting": {"reason": "ContainerCreating"}})],
            JobPhase.PENDING,
            "ContainerCreating",
            ["waiting"],
        ),
        (
            JOB,
            [
                _pod(
                    "Pending",
                    {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off "x:1"'}},
                )
            ],
            JobPhase.FAILED,
            "ImagePullBackOff",
            ["cannot start", 'Back-off "x:1"'],
        ),
        (
            JOB,
            [_pod("Running", {"running": {"startedAt": "t"}})],
            JobPhase.RUNNING,
            None,
            [],
        ),
        (
            _failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            [_pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
            JobPhase.FAILED,
            "OOMKilled",
            ["BackoffLimitExceeded", "OOMKilled (exit code 137, signal 9)"],
        ),
        (
            _failed_job("DeadlineExceeded", "Job was active longer than specified deadline"),
            [],
            JobPhase.FAILED,
            "DeadlineExceeded",
            ["DeadlineExceeded: Job was active longer than specified deadline"],
        ),
        (
            JOB,
            [_pod("Failed", reason="Evicted", message="The node was low on resource: memory.")],
            JobPhase.FAILED,
            "Evicted",
            ["Evicted: The node was low on resource: memory."],
        ),
        (
            {"metadata": {"name": "j"}, "status": {"succeeded": 1}},
            [_pod("Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}})],
            JobPhase.SUCCEEDED,
            "Completed",
            [],
        ),
    ],
)
def test_read_state(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    phase: JobPhase,
    reason: str | None,
    words: list[str],
) -> None:
    state = read_state(job, pods)
    assert (state.phase, state.reason) == (phase, reason)
    for word in words:
        assert word in state.detail
    assert state.over == (phase in (JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.GONE))


@pytest.mark.parametrize(
    ("job", "pods", "concluded"),
    [
        (None, [], True),
        (
            _failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            [_pod("Failed", {"terminated": {"exitCode": 7, "reason": "Error"}})],
            True,
        ),
        # the pod has failed, the Job controller has not said so yet
        (JOB, [_pod("Failed", {"terminated": {"exitCode": 7, "reason": "Error"}})], False),
        ({"metadata": {"name": "j"}, "status": {"succeeded": 1}}, [], True),
        (JOB, [_pod("Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}})], False),
        (JOB, [_pod("Running", {"running": {"startedAt": "t"}})], False),
    ],
)
def test_a_state_is_concluded_by_the_job_not_by_its_pod(
    job: dict[str, Any] | None, pods: list[dict[str, Any]], concluded: bool
) -> None:
    assert read_state(job, pods).concluded is concluded
