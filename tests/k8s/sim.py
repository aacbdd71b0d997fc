"""A simulated Kubernetes cluster for the k8s sandbox's tests: KMock + a test-side kubelet.

The API server is KMock's :class:`kmock.KubernetesEmulator` (by the author of
kopf), a real HTTP server keeping objects in memory. :class:`ApiServer` adds what
the emulator lacks and the sandbox relies on (nothing else):

- ``labelSelector`` / ``fieldSelector`` on list requests (KMock returns every
  object of the resource); equality, ``!=``, ``in (...)``, ``notin (...)`` and
  existence, as in ``k8s.io/apimachinery/pkg/labels``;
- server-set metadata on create: ``namespace``, ``uid``, ``creationTimestamp``,
  ``resourceVersion``;
- the ``pods/log`` subresource, served from the kubelet's captured output;
- fault injection: the next N requests matching a predicate fail with a
  Kubernetes ``Status`` (e.g. 503).

:class:`Kubelet` plays the job controller, the scheduler and the kubelet of a
one-node cluster, through the same HTTP API a real one uses. It notices new
Jobs, creates their pod, "pulls" the image (an image under ``registry.invalid/``
fails with ``ErrImagePull`` then ``ImagePullBackOff``), schedules it (requests
over the node's capacity stay ``Unschedulable``), mounts ConfigMap volumes (as
files at the mount path), and runs the container's command as a local process
(``mawex`` is this interpreter's ``python -m mawex``: the "image" is this
checkout). It writes pod and Job status back like Kubernetes does: ``Running``,
``Succeeded``/``Complete``, ``Failed``/``BackoffLimitExceeded`` with the exit
code, ``OOMKilled`` (exit 137) when the process's resident memory exceeds the
container's memory limit, ``DeadlineExceeded`` after ``activeDeadlineSeconds``;
and it kills the process and deletes the pods of a deleted Job (the garbage
collector's part, for ``propagationPolicy: Background``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import os
import re
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import kmock
from kmock._internal import rendering

NODE = "sim-node-1"
REPO = Path(__file__).resolve().parents[2]


def now() -> str:
    """An RFC 3339 timestamp, as Kubernetes writes them."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- selectors ----------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def matches_labels(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy a Kubernetes label selector."""
    for requirement in _split_selector(selector):
        found = _SET_RE.match(requirement)
        if found:
            key, op, values = found.groups()
            allowed = {value.strip() for value in values.split(",") if value.strip()}
            if op == "in" and labels.get(key) not in allowed:
                return False
            if op == "notin" and key in labels and labels[key] in allowed:
                return False
        elif "!=" in requirement:
            key, value = (s.strip() for s in requirement.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = (s.strip() for s in requirement.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def matches_fields(selector: str, obj: dict[str, Any]) -> bool:
    """Whether ``obj`` satisfies a field selector (``metadata.name``/``metadata.namespace``)."""
    for requirement in _split_selector(selector):
        negate = "!=" in requirement
        key, value = (s.strip() for s in re.split(r"!=|==|=", requirement, maxsplit=1))
        current: Any = obj
        for part in key.split("."):
            current = (current or {}).get(part) if isinstance(current, dict) else None
        if (str(current) == value) == negate:
            return False
    return True


# -- the API server -------------------------------------------------------------------


@dataclass
class Fault:
    """Fail the next ``times`` requests for which ``when(request)`` is true.

    ``stored``: the API server applies a write and then fails the response (a
    proxy timeout after the commit); otherwise it refuses before storing anything.
    """

    when: Callable[[rendering.Request], bool]
    times: int
    status: int = 503
    reason: str = "ServiceUnavailable"
    stored: bool = False
    hits: int = 0

    def take(self, request: rendering.Request, stored: bool) -> bool:
        """Whether this fault fails ``request`` now (and count it)."""
        if self.stored == stored and self.hits < self.times and self.when(request):
            self.hits += 1
            return True
        return False

    def error(self) -> kmock.KubernetesError:
        return kmock.KubernetesError(
            status=self.status,
            reason=self.reason,
            message=f"injected fault ({self.hits}/{self.times})",
            details={},
        )


class ApiServer(kmock.KubernetesEmulator):
    """KMock's emulator plus selectors, server-set metadata, pod logs and fault injection."""

    logs: dict[tuple[str, str], Path]
    faults: list[Fault]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.logs = {}
        self.faults = []
        self._versions = itertools.count(1)
        self[self._faulty] << self._fail
        self[self._is_log] << self._serve_log

    def inject(
        self,
        when: Callable[[rendering.Request], bool],
        times: int = 1,
        status: int = 503,
        *,
        stored: bool = False,
    ) -> Fault:
        """Fail the next ``times`` matching requests with ``status``."""
        reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}
        fault = Fault(when, times, status, reason.get(status, "InternalError"), stored)
        self.faults.append(fault)
        return fault

    def _faulty(self, request: rendering.Request) -> bool:
        return any(f.stored and f.hits < f.times and f.when(request) for f in self.faults)

    def _fail(self, request: rendering.Request) -> None:
        # A KMock reaction: it runs after the emulator has applied the request.
        for fault in self.faults:
            if fault.take(request, stored=True):
                raise fault.error()

    @staticmethod
    def _is_log(request: rendering.Request) -> bool:
        return request.subresource == "log" and request.method == kmock.method.GET

    def _serve_log(self, request: rendering.Request) -> Any:
        path = self.logs.get((request.namespace or "", request.name or ""))
        if path is None or not path.exists():
            raise kmock.KubernetesError(status=404, reason="NotFound", message="no log")
        lines = path.read_text(errors="replace").splitlines()
        tail = request.params.get("tailLines")
        if tail:
            lines = lines[-int(tail) :]
        return kmock.text("".join(f"{line}\n" for line in lines))

    async def _handle(self, request: rendering.Request) -> Any:
        for fault in self.faults:
            if fault.take(request, stored=False):
                return await self._render_error(fault.error())
        if (
            request.resource is not None
            and request.action == kmock.action.CREATE
            and isinstance(request.data, dict)
        ):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)

    async def _serve_list(self, request: rendering.Request) -> Any:
        result: dict[str, Any] = dict(cast(dict[str, Any], await super()._serve_list(request)))
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        items = [
            item
            for item in result["items"]
            if (
                not labels
                or matches_labels(labels, (item.get("metadata") or {}).get("labels") or {})
            )
            and (not fields or matches_fields(fields, item))
        ]
        return {
            **result,
            "items": items,
            "metadata": {"resourceVersion": str(next(self._versions))},
        }


# -- the kubelet ----------------------------------------------------------------------


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes."""
    for suffix, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(float(quantity))


def cpu_millis(quantity: str) -> int:
    """A Kubernetes CPU quantity in millicores."""
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return int(float(quantity) * 1000)


def _write_files(target: Path, data: dict[str, str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (target / key).write_text(value)


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class SimJob:
    """What the kubelet knows of one Job."""

    namespace: str
    name: str
    uid: str
    spec: dict[str, Any]
    metadata: dict[str, Any]
    started: float
    pod: str = ""
    process: asyncio.subprocess.Process | None = None
    log: Path | None = None
    memory_limit: int | None = None
    phase: str = "Pending"
    finished: bool = False
    collected: bool = False
    history: list[str] = field(default_factory=list)


class Kubelet:
    """A one-node cluster's job controller, scheduler and kubelet, over the HTTP API.

    ``node_cpu``/``node_memory`` are the node's allocatable resources; ``tick`` the
    period of its reconcile loop. ``jobs`` keeps every Job it saw, by name.
    """

    def __init__(
        self,
        base_url: str,
        workdir: Path,
        *,
        node_cpu: str = "4",
        node_memory: str = "16Gi",
        tick: float = 0.05,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.workdir = workdir
        self.node_cpu = cpu_millis(node_cpu)
        self.node_memory = memory_bytes(node_memory)
        self.tick = tick
        #: False plays a cluster that does not enforce activeDeadlineSeconds (in time).
        self.enforce_deadlines = True
        #: Seconds between a failed pod and its Job's ``Failed`` condition: a real Job
        #: controller marks the Job a moment after the pod ends.
        self.verdict_delay = 0.0
        self.jobs: dict[str, SimJob] = {}
        #: The most container processes ever seen running at once.
        self.max_running = 0
        self.api: ApiServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    # -- HTTP helpers -----------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        async with self._session.request(method, f"{self.base_url}{path}", json=body) as resp:
            if resp.status == 404:
                return None
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} {await resp.text()}")
            return await resp.json(content_type=None)

    async def _patch_job_status(self, job: SimJob, status: dict[str, Any]) -> None:
        path = f"/apis/batch/v1/namespaces/{job.namespace}/jobs/{job.name}/status"
        await self._request("PATCH", path, {"status": status})

    async def _patch_pod_status(self, job: SimJob, status: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{job.namespace}/pods/{job.pod}/status"
        await self._request("PATCH", path, {"status": status})

    # -- lifecycle --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Kubelet]:
        """Run the reconcile loop; on exit kill every process it started."""
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            # on Python 3.11 a wait_for inside the loop can swallow one cancellation:
            # cancel again until the loop has really stopped
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1)
            for job in self.jobs.values():
                await self._kill(job)
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self._reconcile()
            except (aiohttp.ClientError, RuntimeError) as exc:
                # An injected fault hit the kubelet: a real one retries too.
                print(f"kubelet: {exc}", file=sys.stderr)
            await asyncio.sleep(self.tick)

    async def _reconcile(self) -> None:
        listing = await self._request("GET", "/apis/batch/v1/jobs")
        seen = set()
        for obj in (listing or {}).get("items") or []:
            meta = obj["metadata"]
            seen.add(meta["name"])
            job = self.jobs.get(meta["name"])
            if job is None or job.uid != meta.get("uid"):
                job = self.jobs[meta["name"]] = SimJob(
                    namespace=meta.get("namespace") or "default",
                    name=meta["name"],
                    uid=meta.get("uid", ""),
                    spec=obj["spec"],
                    metadata=meta,
                    started=asyncio.get_running_loop().time(),
                )
                await self._admit(job)
            elif not job.finished:
                await self._supervise(job)
        for name, job in self.jobs.items():
            if name not in seen and not job.collected:
                await self._collect(job)
        self.max_running = max(self.max_running, len(self.running_processes()))

    # -- one Job ----------------------------------------------------------------------

    def _container(self, job: SimJob) -> dict[str, Any]:
        container: dict[str, Any] = job.spec["template"]["spec"]["containers"][0]
        return container

    async def _admit(self, job: SimJob) -> None:
        """The job controller creates the pod; the scheduler and the kubelet take over."""
        job.history.append("created")
        await self._patch_job_status(job, {"startTime": now(), "active": 1})
        template = job.spec["template"]
        job.pod = f"{job.name}-{secrets.token_hex(3)[:5]}"
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "job-name": job.name,
            "batch.kubernetes.io/job-name": job.name,
            "controller-uid": job.uid,
            "batch.kubernetes.io/controller-uid": job.uid,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": job.pod,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job.name,
                        "uid": job.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        await self._request("POST", f"/api/v1/namespaces/{job.namespace}/pods", pod)
        container = self._container(job)
        requests = (container.get("resources") or {}).get("requests") or {}
        limits = (container.get("resources") or {}).get("limits") or {}
        short = []
        if cpu_millis(requests.get("cpu", "0")) > self.node_cpu:
            short.append("1 Insufficient cpu")
        if memory_bytes(requests.get("memory", "0")) > self.node_memory:
            short.append("1 Insufficient memory")
        if short:
            message = f"0/1 nodes are available: {', '.join(short)}."
            await self._patch_pod_status(job, self._pending_status(unschedulable=message))
            job.history.append("unschedulable")
            return
        if "memory" in limits:
            job.memory_limit = memory_bytes(limits["memory"])
        image = container["image"]
        if image.startswith("registry.invalid/"):
            await self._patch_pod_status(
                job,
                self._pending_status(
                    waiting={
                        "reason": "ErrImagePull",
                        "message": f'failed to pull and unpack image "{image}": not found',
                    }
                ),
            )
            job.history.append("pull-failed")
            return
        await self._start(job, container)

    def _pending_status(
        self, *, unschedulable: str | None = None, waiting: dict[str, str] | None = None
    ) -> dict[str, Any]:
        if unschedulable:
            return {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": unschedulable,
                        "lastTransitionTime": now(),
                    }
                ],
            }
        return {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "executor",
                    "ready": False,
                    "restartCount": 0,
                    "image": "",
                    "imageID": "",
                    "state": {"waiting": waiting or {"reason": "ContainerCreating"}},
                }
            ],
        }

    async def _mount(self, job: SimJob) -> bool:
        """Write each ConfigMap volume's keys as files at the mount path."""
        pod_spec = job.spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        for mount in self._container(job).get("volumeMounts") or []:
            source = (volumes.get(mount["name"]) or {}).get("configMap")
            if not source:
                continue
            cm = await self._request(
                "GET", f"/api/v1/namespaces/{job.namespace}/configmaps/{source['name']}"
            )
            if cm is None:
                return False  # a real kubelet retries the mount: the pod stays Pending
            _write_files(Path(mount["mountPath"]), cm.get("data") or {})
        return True

    async def _start(self, job: SimJob, container: dict[str, Any]) -> None:
        if not await self._mount(job):
            await self._patch_pod_status(job, self._pending_status())
            job.history.append("mount-failed")
            return
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and argv[0] == "mawex":
            argv = [sys.executable, "-m", "mawex", *argv[1:]]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "HOSTNAME": job.pod,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),  # the "image" holds this checkout, tests included
        }
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
        job.log = self.workdir / f"{job.pod}.log"
        if self.api is not None:
            self.api.logs[(job.namespace, job.pod)] = job.log
        with job.log.open("wb") as out:
            job.process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        job.phase = "Running"
        job.history.append("running")
        await self._patch_pod_status(
            job,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now(),
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "containerStatuses": [
                    {
                        "name": "executor",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "image": container["image"],
                        "imageID": "",
                        "state": {"running": {"startedAt": now()}},
                    }
                ],
            },
        )
        await self._patch_job_status(job, {"active": 1, "ready": 1})

    async def _supervise(self, job: SimJob) -> None:
        loop = asyncio.get_running_loop()
        deadline = job.spec.get("activeDeadlineSeconds")
        overdue = deadline is not None and loop.time() - job.started > deadline
        if overdue and self.enforce_deadlines:
            await self._kill(job)
            await self._fail_job(
                job, "DeadlineExceeded", "Job was active longer than specified deadline"
            )
            # The job controller deletes the active pods of a Job past its deadline.
            await self._request("DELETE", f"/api/v1/namespaces/{job.namespace}/pods/{job.pod}")
            job.history.append("deadline")
            return
        if job.history and job.history[-1] == "pull-failed":
            await self._patch_pod_status(
                job,
                self._pending_status(
                    waiting={
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{self._container(job)["image"]}"',
                    }
                ),
            )
            job.history.append("pull-backoff")
        process = job.process
        if process is None:
            return
        if job.memory_limit is not None and process.returncode is None:
            if _rss_bytes(process.pid) > job.memory_limit:
                await self._kill(job)
                await self._terminated(job, 137, "OOMKilled")
                return
        if process.returncode is not None:
            code = process.returncode
            if code < 0:
                code = 128 - code
            await self._terminated(job, code, "Completed" if code == 0 else "Error")

    async def _terminated(self, job: SimJob, code: int, reason: str) -> None:
        job.history.append(f"terminated:{reason}:{code}")
        phase = "Succeeded" if code == 0 else "Failed"
        await self._patch_pod_status(
            job,
            {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": "executor",
                        "ready": False,
                        "restartCount": 0,
                        "image": self._container(job)["image"],
                        "imageID": "",
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": reason,
                                "startedAt": now(),
                                "finishedAt": now(),
                            }
                        },
                    }
                ],
            },
        )
        if code == 0:
            job.finished = True
            await self._patch_job_status(
                job,
                {
                    "active": 0,
                    "ready": 0,
                    "succeeded": 1,
                    "completionTime": now(),
                    "conditions": [
                        {
                            "type": "SuccessCriteriaMet",
                            "status": "True",
                            "reason": "CompletionsReached",
                        },
                        {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
                    ],
                },
            )
        else:
            if self.verdict_delay:
                await asyncio.sleep(self.verdict_delay)
            await self._fail_job(
                job, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )

    async def _fail_job(self, job: SimJob, reason: str, message: str) -> None:
        job.finished = True
        condition = {
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now(),
        }
        await self._patch_job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "failed": 1,
                "conditions": [
                    {"type": "FailureTarget", **condition},
                    {"type": "Failed", **condition},
                ],
            },
        )

    async def _collect(self, job: SimJob) -> None:
        """The Job is gone: kill its process and delete its pods (background propagation)."""
        job.history.append("collected")
        job.finished = job.collected = True
        await self._kill(job)
        if job.pod:
            await self._request("DELETE", f"/api/v1/namespaces/{job.namespace}/pods/{job.pod}")

    async def _kill(self, job: SimJob) -> None:
        process = job.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(process.wait(), 10)

    # -- for assertions -----------------------------------------------------------------

    async def live_jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        """The Jobs the API server holds in ``namespace``."""
        listing = await self._request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")
        return list((listing or {}).get("items") or [])

    async def live_pods(self, namespace: str = "default") -> list[dict[str, Any]]:
        """The pods the API server holds in ``namespace``."""
        listing = await self._request("GET", f"/api/v1/namespaces/{namespace}/pods")
        return list((listing or {}).get("items") or [])

    def running_processes(self) -> list[int]:
        """The pids of container processes still running."""
        return [
            job.process.pid
            for job in self.jobs.values()
            if job.process is not None and job.process.returncode is None
        ]
