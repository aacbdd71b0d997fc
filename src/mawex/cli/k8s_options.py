"""The ``mawex worker`` options of the ``k8s`` sandbox (``--k8s-*``, ``--kubeconfig``,
``--advertise-host``), and how they become :class:`~mawex.sandbox.k8s.K8sSandbox` settings.

``--sandbox-env`` and ``--mount-path`` are shared with the forked sandbox and
declared with the other worker options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from mawex.cli.options import option

F = TypeVar("F", bound=Callable[..., Any])

#: (flag, parameter name, click keyword arguments), in --help order.
_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--k8s-image", "k8s_image", {"help": "k8s: container image of the task Jobs (has mawex)."}),
    (
        "--k8s-namespace",
        "k8s_namespace",
        {"help": "k8s: namespace of the Jobs (default: the service account's or context's)."},
    ),
    (
        "--kubeconfig",
        "kubeconfig",
        {"help": "k8s: kubeconfig file (default: in-cluster account, else ~/.kube/config)."},
    ),
    ("--k8s-context", "k8s_context", {"help": "k8s: kubeconfig context to use."}),
    ("--k8s-cpu-request", "k8s_cpu_request", {"help": "k8s: CPU request of a task, e.g. 500m."}),
    ("--k8s-cpu-limit", "k8s_cpu_limit", {"help": "k8s: CPU limit of a task."}),
    ("--k8s-memory-request", "k8s_memory_request", {"help": "k8s: memory request, e.g. 1Gi."}),
    ("--k8s-memory-limit", "k8s_memory_limit", {"help": "k8s: memory limit (OOMKilled above)."}),
    (
        "--k8s-configmap",
        "k8s_configmap",
        {"help": "k8s: ConfigMap mounted read-only at --mount-path in every task's container."},
    ),
    (
        "--k8s-service-account",
        "k8s_service_account",
        {"help": "k8s: service account of the task pods (none of its token is mounted)."},
    ),
    (
        "--k8s-image-pull-policy",
        "k8s_image_pull_policy",
        {"type": click.Choice(["Always", "IfNotPresent", "Never"]), "help": "k8s: pull policy."},
    ),
    (
        "--k8s-listen",
        "k8s_listen",
        {
            "default": "0.0.0.0:0",
            "help": "k8s: HOST:PORT of the connect-back server the task pods connect to.",
        },
    ),
    (
        "--advertise-host",
        "advertise_host",
        {
            "help": "k8s: address the task pods reach this worker at (e.g. the pod IP; "
            "default: the --k8s-listen host, or this host's address)."
        },
    ),
    (
        "--k8s-start-timeout",
        "k8s_start_timeout",
        {
            "type": click.FloatRange(0, None, min_open=True),
            "default": 300.0,
            "help": "k8s: seconds for a Job to be scheduled, pull its image and connect back.",
        },
    ),
    (
        "--k8s-poll-interval",
        "k8s_poll_interval",
        {
            "type": click.FloatRange(0, None, min_open=True),
            "default": 1.0,
            "help": "k8s: seconds between Job status reads while it starts (5x once running).",
        },
    ),
    (
        "--k8s-ttl-after-finished",
        "k8s_ttl_after_finished",
        {
            "type": click.IntRange(0),
            "default": 600,
            "help": "k8s: ttlSecondsAfterFinished of the Jobs, a backstop for undeleted ones.",
        },
    ),
]

#: The parameter names the options above add to the command's keyword arguments.
K8S_PARAMS = frozenset(name for _, name, _ in _OPTIONS)


def k8s_options(func: F) -> F:
    """Add the k8s sandbox's options to a click command."""
    for flag, name, kwargs in reversed(_OPTIONS):
        func = option(flag, name, **{"default": None, **kwargs})(func)
    return func


def k8s_sandbox_options(
    params: Mapping[str, Any],
    *,
    pod: str,
    groups: Sequence[str],
    env: Sequence[str] = (),
    mount_path: str | None = None,
) -> dict[str, Any]:
    """The K8sSandbox keyword arguments for the parsed ``params`` of :func:`k8s_options`."""
    if not params.get("k8s_image"):
        raise click.UsageError("--sandbox k8s needs --k8s-image (or MAWEX_K8S_IMAGE)")
    return {
        "image": params["k8s_image"],
        "namespace": params.get("k8s_namespace"),
        "kubeconfig": params.get("kubeconfig"),
        "context": params.get("k8s_context"),
        "cpu_request": params.get("k8s_cpu_request"),
        "cpu_limit": params.get("k8s_cpu_limit"),
        "memory_request": params.get("k8s_memory_request"),
        "memory_limit": params.get("k8s_memory_limit"),
        "configmap": params.get("k8s_configmap"),
        "service_account": params.get("k8s_service_account"),
        "image_pull_policy": params.get("k8s_image_pull_policy"),
        "listen": params.get("k8s_listen") or "0.0.0.0:0",
        "advertise_host": params.get("advertise_host"),
        "start_timeout": params.get("k8s_start_timeout") or 300.0,
        "poll_interval": params.get("k8s_poll_interval") or 1.0,
        "ttl_after_finished": params.get("k8s_ttl_after_finished"),
        "env": list(env),
        "mount_path": mount_path,
        "pod": pod,
        "groups": list(groups),
    }
