"""A master on a Unix socket: real workers and both clients reach it, tokens still apply,
``not_leader`` hints lead to it, and a client refuses what cannot reach it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import mawex
from mawex.errors import ConfigError, Unavailable
from mawex.local import LocalMaster
from mawex.worker.runner import WorkerPool, build_workers

ECHO = "mawex.examples.demo:echo"


@pytest.fixture
async def master(sock_dir: Path) -> AsyncIterator[LocalMaster]:
    listen = f"unix:{sock_dir / 'm.sock'}"
    journal = f"sqlite:///{sock_dir / 'm.db'}?synchronous=normal"
    async with LocalMaster(journal, listen=listen, token="s3cret") as local:
        yield local


async def _workers(url: str, groups: str, pod: str) -> WorkerPool:
    pool = build_workers(ECHO, masters=[url], groups=groups, pod=pod, token="s3cret")
    asyncio.get_running_loop().create_task(pool.run())
    await asyncio.wait_for(pool.wait_connected(), 10)
    return pool


async def test_workers_and_both_clients_over_a_unix_socket(
    master: LocalMaster, sock_dir: Path
) -> None:
    path = sock_dir / "m.sock"
    assert master.url == f"http+unix://{str(path).replace('/', '%2F')}"
    assert [str(a) for a in master.addresses] == [f"unix:{path}"]
    assert (master.host, master.port) == (None, None)
    pool = await _workers(f"unix:{path}", "g", "p")
    try:
        async with mawex.AsyncClient(f"unix:{path}", token="s3cret") as client:
            assert await client.run("g", {"n": 1}, timeout=10) == {"n": 1}
            tasks = [{"id": f"t{i}", "payload": {"n": i}} for i in range(20)]
            assert (await client.submit_many(tasks, group="g")).accepted == 20
            results = [await client.result("g", f"t{i}", timeout=10) for i in range(20)]
            assert results == [{"n": i} for i in range(20)]

        def sync_calls() -> list[object]:
            with mawex.Client(master.url, token="s3cret") as client:
                return [client.run("g", i, timeout=10) for i in range(5)]

        assert await asyncio.to_thread(sync_calls) == [0, 1, 2, 3, 4]
    finally:
        pool.stop()
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as raw:
        assert (await raw.get("/v1/state")).status_code == 401
        authorized = await raw.get("/v1/state", headers={"Authorization": "Bearer s3cret"})
        assert authorized.status_code == 200 and authorized.json()["leader"] is True
    await master.stop()
    assert not path.exists()


async def test_a_master_on_tcp_and_a_unix_socket_at_once(sock_dir: Path) -> None:
    path = sock_dir / "both.sock"
    journal = f"sqlite:///{sock_dir / 'b.db'}?synchronous=normal"
    async with LocalMaster(journal, listen=f"127.0.0.1:0,unix:{path}") as local:
        tcp, unix = local.addresses
        assert tcp.port != 0 and local.url == f"http://127.0.0.1:{tcp.port}"
        assert (local.host, local.port) == ("127.0.0.1", tcp.port)
        pool = await _workers(local.url, "g", "p")  # the worker on TCP
        try:
            async with mawex.AsyncClient(f"unix:{unix.path}") as client:  # the client not
                assert await client.run("g", "both", timeout=10) == "both"
        finally:
            pool.stop()


async def test_clients_follow_a_standby_hint_to_a_unix_socket(sock_dir: Path) -> None:
    journal = f"sqlite:///{sock_dir / 'shared.db'}?synchronous=normal"
    leader = LocalMaster(journal, listen=f"unix:{sock_dir / 'a.sock'}", lease_ttl=1.0)
    standby = LocalMaster(
        journal, listen=f"unix:{sock_dir / 'b.sock'}", lease_ttl=1.0, wait_leader=False
    )
    await leader.start()
    try:
        await standby.start()
        try:
            pool = await _workers(leader.url, "g", "p")
            try:
                # only the standby is named: its not_leader hint is the leader's URL
                async with mawex.AsyncClient(standby.url, failover_timeout=10) as client:
                    assert await client.run("g", "hinted", timeout=10) == "hinted"
                    assert client.masters[0] == leader.url
            finally:
                pool.stop()
        finally:
            await standby.stop()
    finally:
        await leader.stop()


async def test_a_missing_socket_is_unavailable(sock_dir: Path) -> None:
    missing = f"unix:{sock_dir / 'nobody.sock'}"
    async with mawex.AsyncClient(missing, failover_timeout=0.3) as client:
        with pytest.raises(Unavailable, match=r"nobody\.sock"):
            await client.state()


def test_a_client_with_its_own_transport_refuses_a_unix_socket() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with pytest.raises(ConfigError, match="is a Unix socket"):
        mawex.Client("unix:/tmp/m.sock", transport=transport)


def test_tls_is_refused_on_a_unix_socket() -> None:
    with pytest.raises(ConfigError, match="TLS serves TCP addresses only"):
        LocalMaster(listen="unix:/tmp/m.sock", tls_cert="c.pem", tls_key="k.pem")


def test_an_advertised_url_is_checked_and_kept_canonical() -> None:
    with pytest.raises(ConfigError, match="expected http"):
        LocalMaster(advertise="ftp://m1:1")
    assert LocalMaster(advertise="http://m1:1/").url == "http://m1:1"
    assert LocalMaster(advertise="unix:/run/m.sock").url == "http+unix://%2Frun%2Fm.sock"
