"""The ``k8s`` sandbox: every attempt runs as a Kubernetes ``batch/v1`` Job.

Per attempt the worker

1. registers a one-time secret with its connect-back server
   (:mod:`mawex.sandbox.connect_back`, shared by the sandboxes of one process);
2. creates a Job (:func:`~mawex.sandbox.k8s_manifest.build_job`) whose one
   container runs ``mawex executor --connect ws://<advertised host>:<port>/...``;
   the executor connects back, fetches the task, runs it and returns the result;
3. watches the Job by polling it and its pod: a Job that fails (``OOMKilled``,
   ``DeadlineExceeded``, a non-zero exit), cannot start (``ImagePullBackOff``,
   ``ErrImagePull``...), is deleted, or does not connect back within the start
   timeout (e.g. ``Unschedulable``) fails the attempt with Kubernetes' reason and
   the tail of the container's log;
4. deletes the Job (``propagationPolicy: Background``) however the attempt ended:
   result, failure, cancel, timeout, or the worker stopping.

Jobs carry labels naming the task and the worker's stable identity (its pod and
group); on start a worker process deletes the Jobs of its identity left by an
earlier process (a crash, a kill -9). ``ttlSecondsAfterFinished`` is the last
resort for a finished Job nobody deleted.

Timeouts: ``activeDeadlineSeconds`` is the task timeout, so Kubernetes stops the
Job (``DeadlineExceeded``) counting from the Job's start; the worker gives up
``deadline_grace`` seconds later if Kubernetes has not reported by then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mawex.errors import ConfigError
from mawex.model import Task
from mawex.sandbox.base import Outcome
from mawex.sandbox.connect_back import ChildLost, ConnectBackServer, Expectation, task_frame
from mawex.sandbox.executor_ref import ERROR_LIMIT, split_ref
from mawex.sandbox.k8s_api import ClientSettings, JobApi, K8sApiError, connect
from mawex.sandbox.k8s_manifest import (
    ANNOTATION_GROUP,
    ANNOTATION_TASK,
    CONTAINER_NAME,
    JobPhase,
    JobSettings,
    JobState,
    build_job,
    cleanup_selector,
    job_labels,
    job_name,
    read_state,
)
from mawex.sandbox.waiting import wait_any

__all__ = ["INSTANCE", "K8sSandbox", "parse_env", "parse_listen"]

log = logging.getLogger("mawex.sandbox.k8s")

#: This process's instance label: Jobs of the same identity with another one are
#: leftovers of an earlier process and are deleted when a sandbox starts.
INSTANCE = uuid.uuid4().hex[:12]


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → ``(host, port)``; ``[v6]:PORT`` works, ``:PORT`` binds every address."""
    text = listen.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"invalid listen address {listen!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"invalid listen address {listen!r}: port out of range")
    return host, number


def parse_env(items: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``NAME`` (copied from the worker's environment; skipped when unset) or ``NAME=VALUE``."""
    env = os.environ if environ is None else environ
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not name or not all(c.isalnum() or c in "_-." for c in name) or name[0].isdigit():
            raise ConfigError(f"invalid environment variable name in {item!r}")
        if sep:
            result[name] = value
        elif name in env:
            result[name] = env[name]
        else:
            log.warning(
                "environment variable to propagate is not set",
                extra={"action": "k8s_env_missing", "variable": name},
            )
    return result


def _default_advertise_host() -> str:
    """The worker's own address as other pods see it (in a pod: its hostname resolves
    to the pod IP)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# -- one connect-back server per process and listen address ----------------------------


@dataclass(slots=True)
class _SharedServer:
    server: ConnectBackServer
    users: int


_SERVERS: dict[tuple[int, str, int], _SharedServer] = {}


async def _acquire_server(host: str, port: int) -> tuple[tuple[int, str, int], ConnectBackServer]:
    key = (id(asyncio.get_running_loop()), host, port)
    shared = _SERVERS.get(key)
    if shared is None:
        server = ConnectBackServer(host, port)
        shared = _SERVERS[key] = _SharedServer(server, 0)
        try:
            await server.start()
        except BaseException:
            del _SERVERS[key]
            raise
    shared.users += 1
    return key, shared.server


async def _release_server(key: tuple[int, str, int]) -> None:
    shared = _SERVERS.get(key)
    if shared is None:
        return
    shared.users -= 1
    if shared.users <= 0:
        del _SERVERS[key]
        await shared.server.close()


# -- the sandbox ----------------------------------------------------------------------


class _Attempt:
    """The attempt being run: its Job, and why it was stopped (if it was)."""

    __slots__ = ("job", "pods", "reason", "stop", "task")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.job: str | None = None
        self.pods: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self.reason: str | None = None


class K8sSandbox:
    """Runs each attempt as a Kubernetes Job (kind ``k8s``).

    Job shape: ``image`` (required), ``command`` (before ``--connect URL``),
    ``cpu_request``/``cpu_limit``/``memory_request``/``memory_limit``
    (Kubernetes quantities), ``env`` (``NAME`` to copy from the worker's
    environment or ``NAME=VALUE``), ``configmap`` mounted at ``mount_path``,
    ``service_account``, ``image_pull_policy``, ``ttl_after_finished``.

    Cluster: ``namespace`` (default: the service account's or kubeconfig
    context's), ``kubeconfig``/``context`` or ``in_cluster``.

    Identity: ``pod`` and ``groups`` name the worker in the Jobs' labels (default
    pod: the host name); ``instance`` names this process (default: random per
    process).

    Connect-back: the server listens on ``listen`` (``HOST:PORT``) and executors
    are told to connect to ``advertise_host`` (default: the listen host, or this
    host's address when listening on every interface) at the bound port.

    Timing: ``start_timeout`` bounds the wait for the executor to connect back
    after the Job is created; ``poll_interval`` is the Job polling period before it
    connects (five times that after); ``deadline_grace`` is how long after the task
    timeout the worker waits for Kubernetes to report ``DeadlineExceeded``;
    ``lost_grace`` how long it waits for the Job to explain a lost connection.
    API calls are retried ``api_retries`` times, each bounded by ``request_timeout``.
    """

    kind = "k8s"

    def __init__(
        self,
        executor_ref: str,
        args: Mapping[str, str] | None = None,
        *,
        image: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
        pod: str | None = None,
        groups: Sequence[str] | None = None,
        instance: str | None = None,
        command: Sequence[str] = ("mawex", "executor"),
        cpu_request: str | None = None,
        cpu_limit: str | None = None,
        memory_request: str | None = None,
        memory_limit: str | None = None,
        env: Iterable[str] = (),
        configmap: str | None = None,
        mount_path: str | None = None,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        ttl_after_finished: int | None = 600,
        listen: str = "0.0.0.0:0",
        advertise_host: str | None = None,
        start_timeout: float = 300.0,
        poll_interval: float = 1.0,
        deadline_grace: float = 5.0,
        lost_grace: float = 10.0,
        api_retries: int = 5,
        request_timeout: float = 30.0,
        log_tail_lines: int = 20,
        client_settings: ClientSettings | None = None,
        error_limit: int = ERROR_LIMIT,
    ) -> None:
        if not image:
            raise ConfigError("the k8s sandbox needs an image (--k8s-image)")
        if mount_path and not configmap:
            log.info(
                "--mount-path without --k8s-configmap: nothing is mounted in the Job",
                extra={"action": "k8s_no_configmap"},
            )
        for what, value in (("start timeout", start_timeout), ("poll interval", poll_interval)):
            if not value > 0:
                raise ConfigError(f"the k8s sandbox's {what} must be positive, not {value!r}")
        self.executor_ref = executor_ref
        self.args = dict(args or {})
        self.namespace = namespace
        self.client_settings = client_settings or ClientSettings(
            kubeconfig=kubeconfig, context=context, in_cluster=in_cluster
        )
        self.pod = pod or socket.gethostname()
        self.groups = list(groups) if groups else None
        self.instance = instance or INSTANCE
        self.settings = JobSettings(
            image=image,
            command=tuple(command),
            cpu_request=cpu_request,
            cpu_limit=cpu_limit,
            memory_request=memory_request,
            memory_limit=memory_limit,
            configmap=configmap,
            mount_path=mount_path,
            service_account=service_account,
            image_pull_policy=image_pull_policy,
            ttl_after_finished_s=ttl_after_finished,
        )
        self._env_items = list(env)
        self.listen_host, self.listen_port = parse_listen(listen)
        self.advertise_host = advertise_host
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.deadline_grace = max(0.0, deadline_grace)
        self.lost_grace = max(0.0, lost_grace)
        self.api_retries = api_retries
        self.request_timeout = request_timeout
        self.log_tail_lines = log_tail_lines
        self.error_limit = error_limit
        self._api: JobApi | None = None
        self._server: ConnectBackServer | None = None
        self._server_key: tuple[int, str, int] | None = None
        self._attempt: _Attempt | None = None
        self._undeleted: set[str] = set()

    @property
    def api(self) -> JobApi:
        """The API wrapper; :meth:`start` must have run."""
        if self._api is None:
            raise RuntimeError("the sandbox is not started")
        return self._api

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the API, start (or share) the connect-back server, delete leftovers.

        Raises ExecutorLoadError for a malformed executor reference (the executor
        itself is imported in the Job's container) and ConfigError when the
        cluster's configuration does not load or its API cannot be reached.
        """
        if self._api is not None:
            return
        split_ref(self.executor_ref)
        self.settings = replace(self.settings, env=parse_env(self._env_items))
        api_client, default_namespace = await connect(self.client_settings)
        self._api = JobApi(
            api_client,
            self.namespace or default_namespace,
            retries=self.api_retries,
            request_timeout=self.request_timeout,
        )
        try:
            try:
                self._server_key, self._server = await _acquire_server(
                    self.listen_host, self.listen_port
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {self.listen_host}:{self.listen_port} for executors "
                    f"to connect back (--k8s-listen): {exc}"
                ) from exc
            if self.advertise_host is None:
                wildcard = self.listen_host in ("0.0.0.0", "::", "")
                self.advertise_host = _default_advertise_host() if wildcard else self.listen_host
            await self._delete_leftovers()
        except BaseException:
            await self.close()
            raise
        log.info(
            "k8s sandbox ready",
            extra={
                "action": "k8s_ready",
                "namespace": self.api.namespace,
                "image": self.settings.image,
                "connect": self._connect_url("<secret>"),
            },
        )

    async def close(self) -> None:
        """Stop the running attempt, delete every Job not yet deleted, release resources."""
        await self.cancel("sandbox closed")
        if self._api is not None:
            for name in sorted(self._undeleted):
                await self._delete(name)
            await self._api.close()
            self._api = None
        if self._server_key is not None:
            key, self._server_key, self._server = self._server_key, None, None
            await _release_server(key)

    async def _delete_leftovers(self) -> None:
        selector = cleanup_selector(self.pod, self.groups, self.instance)
        try:
            jobs = await self.api.list_jobs(selector)
        except K8sApiError as exc:
            raise ConfigError(
                f"cannot list Jobs in namespace {self.api.namespace!r}: {exc}"
            ) from exc
        for job in jobs:
            name = (job.get("metadata") or {}).get("name")
            if name:
                log.warning(
                    "deleting a Job left by an earlier worker process",
                    extra={"action": "k8s_cleanup", "job": name},
                )
                self._undeleted.add(name)
                await self._delete(name)

    # -- attempts ---------------------------------------------------------------------

    async def cancel(self, reason: str) -> None:
        """Stop the running attempt: its Job is deleted and ``run`` returns a failure."""
        attempt = self._attempt
        if attempt is not None and not attempt.stop.is_set():
            attempt.reason = reason
            attempt.stop.set()

    async def run(self, task: Task, timeout_s: float | None) -> Outcome:
        """Run one attempt as a Job; failures become failed Outcomes, never exceptions."""
        api = self.api
        server = self._server
        if server is None:
            raise RuntimeError("the sandbox is not started")
        if self._attempt is not None:
            raise RuntimeError("a sandbox runs one attempt at a time")
        attempt = self._attempt = _Attempt(task)
        secret = server.new_secret()
        expectation = server.expect(
            secret, task_frame(task, self.executor_ref, self.args, timeout_s)
        )
        name = job_name(task.group, task.id, task.attempt, secrets.token_hex(3))
        try:
            manifest = build_job(
                self.settings,
                name=name,
                connect_url=self._connect_url(secret),
                labels=job_labels(
                    pod=self.pod,
                    group=task.group,
                    task_id=task.id,
                    attempt=task.attempt,
                    instance=self.instance,
                ),
                annotations={ANNOTATION_GROUP: task.group, ANNOTATION_TASK: task.id},
                timeout_s=timeout_s,
            )
            self._undeleted.add(name)  # from here on, a Job may exist
            try:
                await api.create_job(manifest)
            except K8sApiError as exc:
                return self._failure(f"cannot create Job {name}: {exc}")
            attempt.job = name
            log.info(
                "Job created",
                extra={"action": "k8s_job_created", "job": name, "task": task.id},
            )
            return await self._supervise(attempt, expectation, name, timeout_s)
        finally:
            expectation.cancel()
            self._attempt = None
            await asyncio.shield(self._delete(name))

    async def _supervise(
        self, attempt: _Attempt, expectation: Expectation, name: str, timeout_s: float | None
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        created = loop.time()
        start_by = created + self.start_timeout
        give_up_at = None if timeout_s is None else created + timeout_s + self.deadline_grace
        state = JobState(JobPhase.PENDING, None, "no status read yet")
        stop: asyncio.Future[Any] = asyncio.ensure_future(attempt.stop.wait())
        outcome_future: asyncio.Future[Any] = expectation.outcome
        try:
            while True:
                registered = expectation.registered.done()
                period = self.poll_interval * (5 if registered else 1)
                wake = loop.time() + period
                if give_up_at is not None:
                    wake = min(wake, give_up_at)
                if not registered:
                    wake = min(wake, start_by)
                await wait_any(outcome_future, stop, timeout=max(0.0, wake - loop.time()))
                if outcome_future.done():
                    return await self._reported(attempt, expectation, name, state)
                if attempt.stop.is_set():
                    return self._failure(f"cancelled: {attempt.reason}")
                state = await self._observe(attempt, name, state)
                if state.over:
                    # The executor may have reported just before its container ended.
                    return await self._job_over(attempt, expectation, name, state)
                now = loop.time()
                if give_up_at is not None and now >= give_up_at:
                    return self._failure(
                        f"timed out after {timeout_s:g}s: Job {name} was still "
                        f"{state.phase} and Kubernetes did not stop it; the Job is deleted"
                    )
                if not expectation.registered.done() and now >= start_by:
                    return await self._failure_with_logs(
                        attempt,
                        f"Job {name} did not start within {self.start_timeout:g}s "
                        f"({state.reason or state.phase}): {state.detail}; the executor "
                        f"did not connect back to {self._connect_url('...')}",
                    )
        finally:
            stop.cancel()

    async def _observe(self, attempt: _Attempt, name: str, previous: JobState) -> JobState:
        """Read the Job and its pods; on an API failure keep the previous reading."""
        try:
            job = await self.api.read_job(name)
            pods = await self.api.list_job_pods(name) if job is not None else []
        except K8sApiError as exc:
            log.warning(
                "cannot read the Job's status",
                extra={"action": "k8s_poll_failed", "job": name, "error": str(exc)},
            )
            return previous
        attempt.pods = pods
        state = read_state(job, pods)
        if state != previous:
            log.debug(
                "Job status",
                extra={
                    "action": "k8s_job_status",
                    "job": name,
                    "phase": str(state.phase),
                    "reason": state.reason,
                },
            )
        return state

    def _settled(self, attempt: _Attempt, expectation: Expectation) -> Outcome | str:
        """The connect-back outcome once it is known: the Outcome, or why the channel was lost."""
        future = expectation.outcome
        if future.cancelled():
            if attempt.stop.is_set():
                return self._failure(f"cancelled: {attempt.reason}")
            return "the connect-back server closed"
        error = future.exception()
        if error is None:
            return future.result()
        if isinstance(error, ChildLost):
            return str(error)
        raise error

    async def _reported(
        self, attempt: _Attempt, expectation: Expectation, name: str, state: JobState
    ) -> Outcome:
        """The connect-back channel ended: with a result, or lost."""
        settled = self._settled(attempt, expectation)
        if isinstance(settled, Outcome):
            return settled
        # The executor's connection dropped: let Kubernetes say why (OOMKilled...).
        state = await self._verdict(attempt, name, state, self.lost_grace)
        if state.phase is JobPhase.FAILED or state.phase is JobPhase.GONE:
            return await self._failure_with_logs(
                attempt, f"Job {name} {state.detail} (executor: {settled})"
            )
        return await self._failure_with_logs(
            attempt,
            f"lost the executor of Job {name} ({settled}); the Job is {state.phase}: "
            f"{state.detail}",
        )

    async def _job_over(
        self, attempt: _Attempt, expectation: Expectation, name: str, state: JobState
    ) -> Outcome:
        """The Job ended or vanished before a result came: wait briefly for one, else fail."""
        await asyncio.wait({expectation.outcome}, timeout=min(2.0, self.lost_grace))
        if expectation.outcome.done():
            settled = self._settled(attempt, expectation)
            if isinstance(settled, Outcome):
                return settled
        # read again after that wait: the Job may have concluded (with its reason) since
        state = await self._observe(attempt, name, state)
        if state.phase is JobPhase.GONE:
            return self._failure(f"Job {name} was deleted before the task finished")
        if state.phase is JobPhase.SUCCEEDED:
            return await self._failure_with_logs(
                attempt, f"Job {name} completed but its executor reported no result"
            )
        return await self._failure_with_logs(attempt, f"Job {name} {state.detail}")

    async def _verdict(
        self, attempt: _Attempt, name: str, state: JobState, within: float
    ) -> JobState:
        """The Job's state once the Job itself has concluded (its controller marks it a
        moment after its pod ends, with the reason: ``BackoffLimitExceeded``...), or as
        it is after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        until = loop.time() + within
        state = await self._observe(attempt, name, state)
        while not (state.over and state.concluded):
            if loop.time() >= until or attempt.stop.is_set():
                break
            await asyncio.sleep(min(self.poll_interval, max(0.0, until - loop.time())))
            state = await self._observe(attempt, name, state)
        return state

    async def _failure_with_logs(self, attempt: _Attempt, error: str) -> Outcome:
        tail = await self._log_tail(attempt)
        if tail:
            error = f"{error}\nlast lines of the executor's log:\n{tail}"
        return self._failure(error)

    async def _log_tail(self, attempt: _Attempt) -> str:
        if not attempt.pods or self.log_tail_lines <= 0:
            return ""
        pod = attempt.pods[-1]
        container = (pod.get("status") or {}).get("containerStatuses") or []
        if not container:
            return ""  # never started: there is no log
        name = (pod.get("metadata") or {}).get("name")
        if not name:
            return ""
        try:
            text = await self.api.pod_log_tail(name, CONTAINER_NAME, self.log_tail_lines)
        except K8sApiError as exc:
            log.debug(
                "cannot read the pod's log",
                extra={"action": "k8s_log_failed", "pod": name, "error": str(exc)},
            )
            return ""
        return text.rstrip()

    def _failure(self, error: str) -> Outcome:
        if len(error) > self.error_limit:
            error = error[: self.error_limit // 2] + "\n...\n" + error[-self.error_limit // 2 :]
        return Outcome.failure(error)

    async def _delete(self, name: str) -> None:
        """Delete Job ``name``; on failure it stays in ``_undeleted`` for :meth:`close`."""
        api = self._api
        if api is None or name not in self._undeleted:
            return
        try:
            existed = await api.delete_job(name)
        except K8sApiError as exc:
            log.error(
                "cannot delete a Job; it is deleted when the worker restarts, or "
                "by Kubernetes ttlSecondsAfterFinished once it has finished",
                extra={"action": "k8s_delete_failed", "job": name, "error": str(exc)},
            )
            return
        self._undeleted.discard(name)
        log.info(
            "Job deleted",
            extra={"action": "k8s_job_deleted", "job": name, "existed": existed},
        )

    def _connect_url(self, secret: str) -> str:
        """The executor's ``--connect`` URL, with the advertised host."""
        server = self._server
        if server is None:
            raise RuntimeError("the sandbox is not started")
        url = server.url_for(secret)
        host = self.advertise_host
        if not host:
            return url
        parts = urlsplit(url)
        netloc = f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
