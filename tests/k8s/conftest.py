"""Fixtures of the k8s sandbox tests: a simulated cluster (KMock + a test kubelet) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from mawex.sandbox.k8s import K8sSandbox
from tests.k8s.sim import ApiServer, Kubelet

IMAGE = "example.org/mawex:test"


@dataclass
class Cluster:
    """The simulated cluster of one test."""

    api: ApiServer
    url: str
    kubelet: Kubelet
    kubeconfig: Path

    def sandbox(self, executor: str = "tests.k8s.executors:echo", **options: Any) -> K8sSandbox:
        """A k8s sandbox on this cluster, tuned for quick tests; ``options`` override."""
        settings: dict[str, Any] = {
            "image": IMAGE,
            "kubeconfig": str(self.kubeconfig),
            "pod": "pod-a",
            "groups": ["g"],
            "listen": "127.0.0.1:0",
            "start_timeout": 30.0,
            "poll_interval": 0.1,
            "deadline_grace": 5.0,
            "lost_grace": 5.0,
            "api_retries": 3,
            "request_timeout": 10.0,
        }
        settings.update(options)
        args = settings.pop("args", None)
        return K8sSandbox(executor, args, **settings)

    async def create(self, path: str, body: dict[str, Any]) -> None:
        """POST an object to the API server (as kubectl would)."""
        await self.kubelet._request("POST", path, body)


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    """A kubeconfig with one context pointing at ``server``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sim", "cluster": {"server": server}}],
        "users": [{"name": "sim-user", "user": {"token": "sim-token"}}],
        "contexts": [
            {
                "name": "sim",
                "context": {"cluster": "sim", "user": "sim-user", "namespace": namespace},
            }
        ],
        "current-context": "sim",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A simulated one-node cluster; its kubelet runs Jobs as local processes."""
    async with ApiServer() as api, kmock.Server(api) as server:
        for resource, kind in (
            ("batch/v1/jobs", "Job"),
            ("v1/pods", "Pod"),
            ("v1/configmaps", "ConfigMap"),
        ):
            api.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True)
        url = str(server.url).rstrip("/")
        node = tmp_path / "node"
        node.mkdir()
        kubelet = Kubelet(url, node)
        kubelet.api = api
        async with kubelet.running():
            yield Cluster(api, url, kubelet, write_kubeconfig(tmp_path / "kubeconfig", url))
