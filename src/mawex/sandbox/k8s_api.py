"""The Kubernetes API calls of the ``k8s`` sandbox, with retries, over ``kubernetes_asyncio``.

:func:`connect` loads the client configuration (a kubeconfig file, or the pod's
service account in-cluster) and :class:`JobApi` wraps the calls: create, read and
delete a Job, list Jobs by label, list a Job's pods, read a pod's log tail. Every
call has a timeout; throttling (429), server errors (5xx) and connection failures
are retried with exponential backoff a bounded number of times, then raised as
:class:`K8sApiError`. Results are plain JSON dicts (camelCase, as the API sends
them), not client model objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mawex.errors import ConfigError

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ClientSettings",
    "JobApi",
    "K8sApiError",
    "connect",
]

log = logging.getLogger("mawex.sandbox.k8s")

#: Where Kubernetes mounts a pod's service-account token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

#: HTTP statuses worth retrying: throttled, or the API server (or a proxy) failed.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")


class K8sApiError(Exception):
    """A Kubernetes API call failed for good; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to reach the API server.

    ``in_cluster``: True uses the service account, False a kubeconfig, None picks
    in-cluster when ``KUBERNETES_SERVICE_HOST`` is set and no ``kubeconfig`` is given.
    ``kubeconfig`` None means ``$KUBECONFIG`` or ``~/.kube/config``. The
    ``service_account_dir`` and ``environ`` are there for tests.
    """

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool | None = None
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    environ: Mapping[str, str] | None = None


def _require_client() -> Any:
    try:
        import kubernetes_asyncio
    except ImportError as exc:  # pragma: no cover - the k8s extra is part of dev installs
        raise ConfigError(
            "the k8s sandbox needs kubernetes_asyncio: pip install 'mawex[k8s]'"
        ) from exc
    return kubernetes_asyncio


async def connect(settings: ClientSettings) -> tuple[Any, str]:
    """An ``ApiClient`` and the namespace its configuration implies.

    The namespace is the service account's in-cluster, the kubeconfig context's
    otherwise, else ``default``. Raises ConfigError when no configuration loads.
    """
    k8s = _require_client()
    from kubernetes_asyncio.config.config_exception import ConfigException

    environ = dict(os.environ if settings.environ is None else settings.environ)
    in_cluster = settings.in_cluster
    if in_cluster is None:
        in_cluster = settings.kubeconfig is None and bool(environ.get("KUBERNETES_SERVICE_HOST"))
    configuration = k8s.client.Configuration()
    namespace = "default"
    try:
        if in_cluster:
            from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

            sa = settings.service_account_dir
            InClusterConfigLoader(
                token_filename=os.path.join(sa, "token"),
                cert_filename=os.path.join(sa, "ca.crt"),
                environ=environ,
            ).load_and_set(configuration)
            namespace = _read_namespace(os.path.join(sa, "namespace")) or namespace
        else:
            path = settings.kubeconfig or environ.get("KUBECONFIG") or None
            loader = await k8s.config.load_kube_config(
                config_file=path,
                context=settings.context,
                client_configuration=configuration,
                persist_config=False,
            )
            context = loader.current_context or {}
            namespace = (context.get("context") or {}).get("namespace") or namespace
    except (ConfigException, OSError, TypeError, KeyError, ValueError) as exc:
        where = "the in-cluster service account" if in_cluster else "the kubeconfig"
        raise ConfigError(f"cannot load Kubernetes configuration from {where}: {exc}") from exc
    return k8s.client.ApiClient(configuration), namespace


def _read_namespace(path: str) -> str | None:
    """The namespace file of a service account (a tiny local file), if readable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _api_error(exc: Any) -> K8sApiError:
    """A short message from an ApiException: the Status object's reason and message."""
    import json

    status = int(getattr(exc, "status", 0) or 0)
    reason = getattr(exc, "reason", None)
    message = None
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
        except (TypeError, ValueError):
            data = None
        if isinstance(data, dict):
            reason = data.get("reason") or reason
            message = data.get("message")
    text = f"HTTP {status} {reason or ''}".strip()
    if message:
        text = f"{text}: {message}"
    return K8sApiError(text, status=status, reason=reason)


class JobApi:
    """Job and pod calls in one namespace, each retried on transient failures.

    ``retries`` is how many times a failed call is repeated (so ``retries + 1``
    tries); ``backoff`` the first pause, doubled up to ``backoff_max``;
    ``request_timeout`` bounds each try.
    """

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        retries: int = 5,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        request_timeout: float = 30.0,
    ) -> None:
        from kubernetes_asyncio import client

        self.api_client = api_client
        self.namespace = namespace
        self.retries = max(0, retries)
        self.backoff = backoff
        self.backoff_max = max(backoff, backoff_max)
        self.request_timeout = request_timeout
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.api_client.close()

    async def _call(
        self, what: str, call: Callable[[], Awaitable[T]], *, retries: int | None = None
    ) -> T:
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        tries = (self.retries if retries is None else retries) + 1
        delay = self.backoff
        for n in range(1, tries + 1):
            try:
                async with asyncio.timeout(self.request_timeout):
                    return await call()
            except ApiException as exc:
                error = _api_error(exc)
                if error.status not in RETRY_STATUSES:
                    raise error from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = K8sApiError(f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc))
            if n == tries:
                raise K8sApiError(f"{what}: {error} (after {tries} tries)", error.status) from error
            log.warning(
                "Kubernetes API call failed; retrying",
                extra={"action": "k8s_retry", "call": what, "error": str(error), "try": n},
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self.backoff_max, delay * 2)
        raise AssertionError("unreachable")  # pragma: no cover

    def _plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    async def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create the Job. When a retried create meets ``409 AlreadyExists``, the
        earlier try did create it (Job names are unique per attempt): that Job is
        returned."""
        name = manifest["metadata"]["name"]
        tried = False

        async def create() -> Any:
            nonlocal tried
            try:
                body: Any = dict(manifest)  # the client serialises plain dicts as they are
                return await self._batch.create_namespaced_job(self.namespace, body)
            except Exception as exc:
                if tried and getattr(exc, "status", None) == 409:
                    return await self._batch.read_namespaced_job(name, self.namespace)
                tried = True
                raise

        result: dict[str, Any] = self._plain(await self._call(f"create Job {name}", create))
        return result

    async def read_job(self, name: str) -> dict[str, Any] | None:
        """The Job, or None when it does not exist."""
        try:
            job = await self._call(
                f"read Job {name}", lambda: self._batch.read_namespaced_job(name, self.namespace)
            )
        except K8sApiError as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self._plain(job)
        return result

    async def list_jobs(self, label_selector: str) -> list[dict[str, Any]]:
        """The Jobs matching ``label_selector``."""
        listing = await self._call(
            "list Jobs",
            lambda: self._batch.list_namespaced_job(self.namespace, label_selector=label_selector),
        )
        items: list[dict[str, Any]] = self._plain(listing).get("items") or []
        return items

    async def list_job_pods(self, name: str) -> list[dict[str, Any]]:
        """The pods the Job controller made for Job ``name`` (label ``job-name``)."""
        listing = await self._call(
            f"list pods of Job {name}",
            lambda: self._core.list_namespaced_pod(
                self.namespace, label_selector=f"job-name={name}"
            ),
        )
        items: list[dict[str, Any]] = self._plain(listing).get("items") or []
        return items

    async def delete_job(self, name: str) -> bool:
        """Delete the Job and (in the background) its pods; False if it was already gone."""
        try:
            await self._call(
                f"delete Job {name}",
                lambda: self._batch.delete_namespaced_job(
                    name, self.namespace, propagation_policy="Background"
                ),
            )
        except K8sApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def pod_log_tail(self, pod: str, container: str, lines: int) -> str:
        """The last ``lines`` lines of a container's log (one try, no retries)."""
        text = await self._call(
            f"read log of pod {pod}",
            lambda: self._core.read_namespaced_pod_log(
                pod, self.namespace, container=container, tail_lines=lines
            ),
            retries=0,
        )
        return str(text or "")
