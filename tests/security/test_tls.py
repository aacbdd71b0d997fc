"""TLS: a master serving HTTPS and WSS with a certificate from a CA made in the test;
workers and clients trust it through ``--ca``, and refuse it (clearly) otherwise."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme

import mawex
from mawex.errors import Unavailable

from .procs import Procs, free_port, healthy, master_args, wait_for

pytestmark = pytest.mark.timeout(150)


def _write_pki(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(ca, cert, key, wrong_ca) PEM files: a cert for 127.0.0.1, its CA, and another CA."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    issued.private_key_pem.write_to_path(str(key_path))
    with open(cert_path, "wb") as out:
        for pem in issued.cert_chain_pems:
            out.write(pem.bytes())
    wrong = tmp_path / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong))
    return ca_path, cert_path, key_path, wrong


def test_encrypted_end_to_end_and_wrong_ca_refused(tmp_path: Path) -> None:
    ca, cert, key, wrong = _write_pki(tmp_path)
    procs = Procs(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(ca))
    executor = "tests.security.executors:echo"
    try:
        procs.start(
            "master",
            *master_args(f"sqlite:///{tmp_path / 'm.db'}", port, "--tls-cert", str(cert),
                         "--tls-key", str(key)),
        )  # fmt: skip
        wait_for(healthy(url, verify=trust), what="the HTTPS master")
        procs.start("worker", "worker", executor, "--master", url, "--group", "g",
                    "--pod", "p1", "--ca", str(ca), "--log-format", "json")  # fmt: skip
        procs.start("wrong-worker", "worker", executor, "--master", url, "--group", "gw",
                    "--pod", "p2", "--ca", str(wrong), "--log-format", "json")  # fmt: skip

        # a task end to end: client -> https -> master -> wss -> worker -> back
        payload = '{"secret": "over TLS"}'
        done = procs.run("submit", "--master", url, "--group", "g", "--id", "tls-1",
                         "--payload", payload, "--wait", "--ca", str(ca))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert '"completed"' in done.stdout and "over TLS" in done.stdout
        with mawex.Client(url, ca=ca) as client:
            client.submit("g", {"n": 2}, id="tls-2")
            assert client.result("g", "tls-2", timeout=30) == {"n": 2}
            workers = client.state()["workers"]
        assert [w["group"] for w in workers] == ["g"], "the worker with the wrong CA is out"
        assert "wss://127.0.0.1" in procs.log("worker")

        # the port speaks only TLS
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

        # a wrong CA, or none (system trust): refused at once, with a clear error
        for args in (("--ca", str(wrong)), ()):
            started = time.monotonic()
            refused = procs.run("status", "--master", url, *args)
            assert refused.returncode != 0
            assert "TLS certificate is trusted" in refused.stderr, refused.stderr
            assert "--ca" in refused.stderr
            assert time.monotonic() - started < 20, "no retrying for the whole --retry-for"
        with mawex.Client(url, ca=wrong) as client, pytest.raises(Unavailable, match="TLS"):
            client.state()
        wait_for(lambda: "tls_refused" in procs.log("wrong-worker"), what="the TLS refusal")
        assert '"level":"error"' in procs.log("wrong-worker").replace(" ", "")
    finally:
        procs.stop_all()


async def test_async_client_and_local_master_over_tls(tmp_path: Path) -> None:
    ca, cert, key, wrong = _write_pki(tmp_path)
    async with mawex.LocalMaster(
        f"sqlite:///{tmp_path / 'l.db'}", tls_cert=str(cert), tls_key=str(key)
    ) as master:
        assert master.url.startswith("https://")
        async with master.client(ca=ca) as client:
            await client.submit("g", {"n": 1}, id="a1")
            assert (await client.get("g", "a1")).status.value == "pending"
        async with mawex.AsyncClient(master.url, ca=wrong) as client:
            with pytest.raises(Unavailable, match="not trusted"):
                await client.state()
