"""Pure helpers of the ``k8s`` sandbox: names, labels, the Job manifest, and reading status.

Nothing here talks to Kubernetes: the functions take and return plain JSON-shaped
dicts (the API's own camelCase field names), so they are unit-tested without a
server and the sandbox (:mod:`mawex.sandbox.k8s`) stays about IO and timing.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "ANNOTATION_GROUP",
    "ANNOTATION_TASK",
    "CONTAINER_NAME",
    "FATAL_WAITING_REASONS",
    "LABEL_ATTEMPT",
    "LABEL_GROUP",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_POD",
    "LABEL_TASK",
    "LABEL_WORKER",
    "JobPhase",
    "JobSettings",
    "JobState",
    "build_job",
    "cleanup_selector",
    "job_labels",
    "job_name",
    "label_value",
    "read_state",
    "worker_identity",
]

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: The stable identity of the worker that owns a Job: its pod and group (worker ids
#: change with every process, these do not).
LABEL_WORKER = "mawex.io/worker"
LABEL_POD = "mawex.io/pod"
LABEL_GROUP = "mawex.io/group"
LABEL_TASK = "mawex.io/task"
LABEL_ATTEMPT = "mawex.io/attempt"
#: The worker process that created the Job: a restarted worker deletes the Jobs of
#: its identity whose instance is not its own.
LABEL_INSTANCE = "mawex.io/instance"
#: Label values are sanitised; the annotations keep the exact names.
ANNOTATION_GROUP = "mawex.io/group"
ANNOTATION_TASK = "mawex.io/task"

#: The name of the Job's one container.
CONTAINER_NAME = "executor"

#: Container waiting reasons that will not resolve by themselves: the attempt fails
#: at once instead of waiting for the start timeout.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

_LABEL_MAX = 63
_LABEL_OK = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_BAD_CHARS = re.compile(r"[^-A-Za-z0-9_.]+")
_DNS_BAD_CHARS = re.compile(r"[^a-z0-9-]+")


def _digest(value: str, size: int = 8) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:size]


def label_value(value: str) -> str:
    """``value`` as a valid Kubernetes label value (at most 63 of ``[-A-Za-z0-9_.]``,
    alphanumeric at both ends).

    A valid value is kept as it is; any other gets its bad characters replaced, is
    shortened, and ends with a hash of the original, so that two different values
    never map to the same label (barring a hash collision).
    """
    if _LABEL_OK.match(value):
        return value
    cleaned = _LABEL_BAD_CHARS.sub("-", value)[: _LABEL_MAX - 9].strip("-_.")
    suffix = _digest(value)
    return f"{cleaned}-{suffix}" if cleaned else suffix


def worker_identity(pod: str, group: str | None = None) -> str:
    """The label value naming a worker across restarts: its pod, and group if known."""
    return label_value(f"{pod}.{group}" if group else pod)


def job_name(group: str, task_id: str, attempt: int, nonce: str) -> str:
    """A Job name (a DNS-1123 label): ``mawex-<group>-<id>-<attempt>-<nonce>``, ≤ 63 chars.

    The readable part is lowercased and shortened; ``nonce`` (random, per attempt)
    keeps it unique, and a hash of group and id keeps shortened names apart.
    """
    tail = f"-a{attempt}-{_digest(f'{group}/{task_id}', 6)}{nonce}"
    readable = _DNS_BAD_CHARS.sub("-", f"{group}-{task_id}".lower()).strip("-")
    room = _LABEL_MAX - len("mawex-") - len(tail)
    readable = readable[: max(0, room)].strip("-")
    name = f"mawex-{readable}{tail}" if readable else f"mawex{tail}"
    return name[:_LABEL_MAX].rstrip("-")


def job_labels(
    *, pod: str, group: str, task_id: str, attempt: int, instance: str
) -> dict[str, str]:
    """The labels of a task's Job (and of its pod template)."""
    return {
        LABEL_MANAGED_BY: "mawex",
        LABEL_WORKER: worker_identity(pod, group),
        LABEL_POD: label_value(pod),
        LABEL_GROUP: label_value(group),
        LABEL_TASK: label_value(task_id),
        LABEL_ATTEMPT: str(attempt),
        LABEL_INSTANCE: label_value(instance),
    }


def cleanup_selector(pod: str, groups: Sequence[str] | None, instance: str) -> str:
    """The label selector of Jobs a (re)started worker process must delete.

    They carry the worker's identity (its pod, and one of its groups when they are
    known) and were made by another process (``instance`` differs).
    """
    parts = [f"{LABEL_MANAGED_BY}=mawex", f"{LABEL_POD}={label_value(pod)}"]
    if groups:
        identities = sorted({worker_identity(pod, group) for group in groups})
        parts.append(f"{LABEL_WORKER} in ({','.join(identities)})")
    parts.append(f"{LABEL_INSTANCE}!={label_value(instance)}")
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class JobSettings:
    """How a worker's Jobs look, beyond the task itself.

    ``command`` is the container command before ``--connect URL`` (the image must
    provide ``mawex``). ``cpu_*``/``memory_*`` are Kubernetes quantities (``500m``,
    ``1Gi``). ``env`` is set in the container as is. ``configmap`` is mounted
    read-only at ``mount_path``. ``deadline_slack_s`` is added to the task timeout
    for ``activeDeadlineSeconds``; ``ttl_after_finished_s`` lets Kubernetes collect
    a finished Job the worker could not delete (None: never).
    """

    image: str
    command: tuple[str, ...] = ("mawex", "executor")
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    configmap: str | None = None
    mount_path: str | None = None
    service_account: str | None = None
    image_pull_policy: str | None = None
    deadline_slack_s: float = 0.0
    ttl_after_finished_s: int | None = 600
    termination_grace_s: int = 10


def _resources(settings: JobSettings) -> dict[str, dict[str, str]]:
    requests = {
        key: value
        for key, value in (("cpu", settings.cpu_request), ("memory", settings.memory_request))
        if value
    }
    limits = {
        key: value
        for key, value in (("cpu", settings.cpu_limit), ("memory", settings.memory_limit))
        if value
    }
    resources: dict[str, dict[str, str]] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def build_job(
    settings: JobSettings,
    *,
    name: str,
    connect_url: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    timeout_s: float | None,
) -> dict[str, Any]:
    """The ``batch/v1`` Job running ``<command> --connect <connect_url>`` once.

    ``restartPolicy: Never`` and ``backoffLimit: 0``: an attempt is one pod; retries
    are the master's business. ``activeDeadlineSeconds`` is the task timeout (plus
    ``deadline_slack_s``), rounded up; the pod's own service-account token is not
    mounted (the executor never talks to the API).
    """
    env = [{"name": key, "value": value} for key, value in settings.env.items()]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "command": [*settings.command, "--connect", connect_url],
    }
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    resources = _resources(settings)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": settings.termination_grace_s,
        "containers": [container],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.configmap:
        mount_path = settings.mount_path or "/etc/mawex"
        pod_spec["volumes"] = [{"name": "mawex-config", "configMap": {"name": settings.configmap}}]
        container["volumeMounts"] = [
            {"name": "mawex-config", "mountPath": mount_path, "readOnly": True}
        ]
        env.append({"name": "MAWEX_MOUNT_PATH", "value": mount_path})
    if env:
        container["env"] = env
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if timeout_s is not None:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(timeout_s + settings.deadline_slack_s))
    if settings.ttl_after_finished_s is not None:
        spec["ttlSecondsAfterFinished"] = settings.ttl_after_finished_s
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
        "spec": spec,
    }


# -- reading status -----------------------------------------------------------------


class JobPhase(StrEnum):
    """Where a task's Job is, as far as the worker is concerned."""

    PENDING = "pending"  # created, its container not running yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the container exited 0
    FAILED = "failed"  # failed for good: ``reason`` and ``detail`` say why
    GONE = "gone"  # the Job no longer exists


@dataclass(frozen=True, slots=True)
class JobState:
    """A reading of a Job and its pods: ``reason`` is Kubernetes' word (``OOMKilled``,
    ``DeadlineExceeded``, ``ImagePullBackOff``, ``Unschedulable``...), ``detail`` the
    sentence for the attempt's error."""

    phase: JobPhase
    reason: str | None = None
    detail: str = ""
    #: The Job itself says it is over (a ``Failed`` or ``Complete`` condition) or is
    #: gone; False while only its pod shows the end, before the Job controller has
    #: marked the Job (and named its reason, e.g. ``BackoffLimitExceeded``).
    concluded: bool = False

    @property
    def over(self) -> bool:
        """Whether the Job will not run the executor (any more)."""
        return self.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.GONE)


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == CONTAINER_NAME:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def _sentence(reason: str | None, message: str | None) -> str:
    text = reason or ""
    if message:
        text = f"{text}: {message}" if text else message
    return text


def _terminated_text(terminated: Mapping[str, Any]) -> str:
    reason = terminated.get("reason") or "Terminated"
    parts = []
    code = terminated.get("exitCode")
    if code is not None:
        parts.append(f"exit code {code}")
        if isinstance(code, int) and code > 128:
            parts.append(f"signal {code - 128}")
    signal = terminated.get("signal")
    if signal:
        parts.append(f"signal {signal}")
    text = f"{reason} ({', '.join(parts)})" if parts else reason
    message = (terminated.get("message") or "").strip()
    return f"{text}: {message}" if message else text


def _pod_failure(pod: Mapping[str, Any]) -> tuple[str | None, str] | None:
    """``(reason, sentence)`` if the pod will not run the executor to success."""
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name", "?")
    container = _container_status(pod)
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in FATAL_WAITING_REASONS:
        reason = waiting["reason"]
        text = _sentence(reason, waiting.get("message"))
        return reason, f"pod {name}: container {CONTAINER_NAME} cannot start: {text}"
    terminated = state.get("terminated") or {}
    if terminated and terminated.get("exitCode") not in (None, 0):
        reason = terminated.get("reason") or "Error"
        return reason, f"pod {name}: container {CONTAINER_NAME} {_terminated_text(terminated)}"
    if status.get("phase") == "Failed":
        reason = status.get("reason") or "Failed"
        return reason, f"pod {name} failed: {_sentence(reason, status.get('message'))}"
    return None


def _pending_text(pod: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """Why a pod (or its absence) is not running yet."""
    if pod is None:
        return None, "no pod was created for the Job yet"
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "Unschedulable"
            return (
                reason,
                f"pod {name} is not scheduled: {_sentence(reason, condition.get('message'))}",
            )
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    if waiting:
        reason = waiting.get("reason")
        return reason, f"pod {name} is waiting: {_sentence(reason, waiting.get('message'))}"
    return None, f"pod {name} is {status.get('phase') or 'Pending'}"


def _newest(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if not pods:
        return None
    return max(pods, key=lambda pod: (pod.get("metadata") or {}).get("creationTimestamp") or "")


def read_state(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> JobState:
    """Interpret a Job (None: not found) and its pods.

    A failure names the Job condition's reason (``DeadlineExceeded``,
    ``BackoffLimitExceeded``) and, when a pod explains it, the pod's own
    (``OOMKilled`` with the exit code, ``ImagePullBackOff``, ``Evicted``); the pod's
    reason wins as the attempt's ``reason`` because it is the more specific one.
    """
    if job is None:
        return JobState(JobPhase.GONE, "Deleted", "was deleted", concluded=True)
    pod = _newest(pods)
    pod_failure = _pod_failure(pod) if pod is not None else None
    failed = _condition(job, "Failed")
    if failed is not None:
        reason = failed.get("reason") or "Failed"
        detail = f"failed: {_sentence(reason, failed.get('message'))}"
        if pod_failure is not None:
            return JobState(
                JobPhase.FAILED,
                pod_failure[0] or reason,
                f"{detail}; {pod_failure[1]}",
                concluded=True,
            )
        return JobState(JobPhase.FAILED, reason, detail, concluded=True)
    if pod_failure is not None:
        return JobState(JobPhase.FAILED, pod_failure[0], f"failed: {pod_failure[1]}")
    status = job.get("status") or {}
    pod_phase = ((pod or {}).get("status") or {}).get("phase")
    if _condition(job, "Complete") or status.get("succeeded") or pod_phase == "Succeeded":
        concluded = bool(_condition(job, "Complete") or status.get("succeeded"))
        return JobState(
            JobPhase.SUCCEEDED, "Completed", "completed: the container exited 0", concluded
        )
    running = ((_container_status(pod).get("state") or {}).get("running")) if pod else None
    if pod_phase == "Running" or running:
        return JobState(JobPhase.RUNNING)
    reason, detail = _pending_text(pod)
    return JobState(JobPhase.PENDING, reason, detail)
