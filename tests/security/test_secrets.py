"""Tokens and connect-back secrets never show: not in logs (at debug level), command
output, ``status``, metrics, error messages or ``repr``s. Real processes, real logs."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

import mawex
from mawex.local import LocalMaster
from mawex.sandbox import create_sandbox
from mawex.worker.runner import Worker

from .procs import Procs, free_port, healthy, master_args, wait_for

pytestmark = pytest.mark.timeout(150)


def _secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def test_tokens_never_appear_in_logs_outputs_or_metrics(tmp_path: Path) -> None:
    client, worker, stray, wrong = (_secret(k) for k in ("client", "worker", "stray", "wrong"))
    procs = Procs(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    debug = ("--log-level", "debug", "--log-format", "json")
    outputs: list[str] = []
    try:
        procs.start(
            "master",
            *master_args(f"sqlite:///{tmp_path / 'm.db'}", port, "--log-level", "debug"),
            env={"MAWEX_TOKEN": client, "MAWEX_WORKER_TOKEN": worker},
        )
        wait_for(healthy(url), what="the master")
        executor = "tests.security.executors:echo"
        common = ("--master", url, *debug)
        procs.start("worker", "worker", executor, "--group", "g", "--pod", "p1", *common,
                    env={"MAWEX_TOKEN": worker})  # fmt: skip
        procs.start("forked", "worker", executor, "--group", "gf", "--pod", "p2",
                    "--sandbox", "forked", "--token", worker, *common)  # fmt: skip
        # a client credential on the worker channel, and a made-up one: both refused
        procs.start("intruder", "worker", executor, "--group", "gi", "--pod", "p3",
                    "--token", client, *common)  # fmt: skip
        procs.start("stranger", "worker", executor, "--group", "gs", "--pod", "p4",
                    "--token", stray, *common)  # fmt: skip
        for group in ("g", "gf"):
            done = procs.run("submit", "--master", url, "--group", group, "--id", "t1",
                             "--payload", '{"n": 1}', "--wait", "--token", client)  # fmt: skip
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout + done.stderr)
        for args in (("status",), ("status", "--json"), ("results", "--from", "0")):
            done = procs.run(*args, "--master", url, env={"MAWEX_TOKEN": client})
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout + done.stderr)
        refused = procs.run("status", "--master", url, "--token", wrong, "--retry-for", "1")
        assert refused.returncode != 0
        assert "token" in refused.stderr.lower() or "unauthorized" in refused.stderr.lower()
        outputs.append(refused.stdout + refused.stderr)
        headers = {"Authorization": f"Bearer {client}"}
        outputs.append(httpx.get(f"{url}/metrics", headers=headers).text)
        outputs.append(httpx.get(f"{url}/v1/state", headers=headers).text)
        outputs.append(httpx.get(f"{url}/v1/results?from=0", headers=headers).text)
        for response in (
            httpx.get(f"{url}/v1/state", headers={"Authorization": f"Bearer {wrong}"}),
            httpx.get(f"{url}/v1/state", headers={"Authorization": f"Bearer {worker}"}),
        ):
            assert response.status_code == 401
            outputs.append(response.text)
        wait_for(
            lambda: "refused" in procs.log("intruder") and "refused" in procs.log("stranger"),
            what="the refused workers to log their refusal",
        )
    finally:
        procs.stop_all()
    everything = procs.all_output() + "\n".join(outputs)
    assert "worker checked in" in procs.log("master")  # the logs are real and at debug level
    assert '"level": "debug"' in everything.lower() or '"debug"' in everything.lower()
    for token in (client, worker, stray, wrong):
        assert token not in everything, f"a token leaked: {token.split('-')[0]}"
    assert "secret=" not in everything, "a connect-back secret leaked"
    assert "401" in procs.log("intruder")


def test_reprs_and_errors_hide_tokens() -> None:
    client, worker = _secret("client"), _secret("worker")
    with mawex.Client("http://127.0.0.1:1", token=client) as sync_client:
        assert client not in repr(sync_client)
    local = LocalMaster("sqlite:///unused.db", token=client, worker_token=worker)
    assert client not in repr(local) and worker not in repr(local)
    sandbox = create_sandbox("local", "tests.security.executors:echo")
    runner = Worker(masters="http://127.0.0.1:1", group="g", pod="p", sandbox=sandbox, token=worker)
    assert worker not in repr(runner)
    assert worker not in str(vars(runner).get("token", ""))


async def test_async_client_repr_hides_token() -> None:
    client = _secret("client")
    async with mawex.AsyncClient("http://127.0.0.1:1", token=client) as async_client:
        assert client not in repr(async_client)
