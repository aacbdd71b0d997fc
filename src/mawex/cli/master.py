"""``mawex master``: run a master (leader or standby)."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from mawex.busy_poll import MAX_WINDOW_S
from mawex.cli.options import log_options, option, run_async, token_option

log = logging.getLogger("mawex.master")


@click.command()
@option(
    "--journal",
    default="sqlite:///./mawex.db",
    help="Journal URL: sqlite:///…, postgresql://…, redis://….",
)
@option(
    "--listen",
    default="127.0.0.1:7070",
    help="HOST:PORT to serve HTTP on, or unix:PATH (a Unix socket, for clients and workers "
    "on this machine); several, comma-separated.",
)
@option(
    "--advertise",
    default=None,
    help="URL others use to reach this master: http(s)://HOST:PORT[/PREFIX] or unix:PATH "
    "(default: from the first --listen address).",
)
@option(
    "--master-id", default="default", help="Namespace of independent masters sharing a journal."
)
@option(
    "--lease-ttl", type=click.FloatRange(0.5, 300), default=5.0, help="Leader lease TTL, seconds."
)
@token_option()
@option(
    "--worker-token",
    default=None,
    help="Bearer token workers must send (their --token) on the worker channel; the client "
    "--token is then refused there, and this one everywhere else.",
)
@option("--tls-cert", default=None, help="TLS certificate (PEM) to serve HTTPS/WSS.")
@option("--tls-key", default=None, help="TLS private key (PEM).")
@option(
    "--heartbeat",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    help="Worker heartbeat interval, seconds.",
)
@option(
    "--worker-grace",
    type=click.FloatRange(0.1, 3600),
    default=5.0,
    help="Seconds a silent or disconnected worker keeps its task.",
)
@option(
    "--pending-timeout",
    type=click.FloatRange(0, None, min_open=True),
    default=None,
    help="Expire tasks pending longer than this (seconds; default: never).",
)
@option(
    "--max-pending",
    type=click.IntRange(1),
    default=1_000_000,
    help="Pending tasks per group before submissions get 429.",
)
@option(
    "--max-payload", type=click.IntRange(1), default=1 << 20, help="Largest task payload, bytes."
)
@option(
    "--max-result",
    type=click.IntRange(1),
    default=1 << 20,
    help="Largest task result, bytes; a larger one fails its attempt.",
)
@option(
    "--max-batch",
    type=click.IntRange(1),
    default=10_000,
    help="Most tasks in one POST /v1/tasks/batch.",
)
@option(
    "--max-connections",
    type=click.IntRange(1),
    default=4096,
    help="Open connections (HTTP and WebSocket); past it new ones get 503.",
)
@option(
    "--header-timeout",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    help="Seconds a connection has to send a request's line and headers.",
)
@option(
    "--body-timeout",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    help="Seconds a client has to send a request's body.",
)
@option(
    "--worker-rate",
    type=click.FloatRange(0),
    default=2000.0,
    help="Frames per second one worker connection may send before it is slowed down (0: no limit).",
)
@option(
    "--snapshot-every",
    type=click.IntRange(100),
    default=50_000,
    help="Save a snapshot every N journal events.",
)
@option(
    "--retain-results",
    type=click.IntRange(0),
    default=100_000,
    help="Finished tasks kept for lookups and idempotency.",
)
@option(
    "--retain-seconds",
    type=click.FloatRange(0),
    default=7 * 24 * 3600.0,
    help="Forget finished tasks older than this.",
)
@option(
    "--retain-topic",
    type=click.IntRange(1),
    default=1_000_000,
    help="Result-topic events kept in the journal.",
)
@option(
    "--busy-poll",
    type=click.FloatRange(0, MAX_WINDOW_S),
    default=0.0,
    help="Seconds the master keeps polling after each change of state instead of sleeping "
    "(e.g. 0.0005): lower latency for sparse traffic, for up to one core of CPU. 0: off.",
)
@log_options
def master(
    journal: str,
    listen: str,
    advertise: str | None,
    master_id: str,
    lease_ttl: float,
    token: str | None,
    worker_token: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    heartbeat: float,
    worker_grace: float,
    pending_timeout: float | None,
    max_pending: int,
    max_payload: int,
    max_result: int,
    max_batch: int,
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
    worker_rate: float,
    snapshot_every: int,
    retain_results: int,
    retain_seconds: float,
    retain_topic: int,
    busy_poll: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run a master. Several masters on one journal elect one leader; the others stand by."""
    from mawex.addresses import parse_listen
    from mawex.core.decide import Limits
    from mawex.errors import ConfigError
    from mawex.journal import parse_journal_url
    from mawex.local import LocalMaster
    from mawex.logs import setup_logging
    from mawex.model import check_name
    from mawex.server.limits import NetLimits, raise_fd_limit
    from mawex.wire.api import ApiLimits

    setup_logging(log_level, log_format)
    parse_journal_url(journal)
    parse_listen(listen)
    check_name(master_id, "master id")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if token and worker_token and token == worker_token:
        raise ConfigError("--worker-token must differ from --token")
    raise_fd_limit(max_connections)
    limits = Limits(
        max_pending_per_group=max_pending,
        heartbeat_s=heartbeat,
        worker_timeout_s=max(heartbeat * 5, 2.0),
        worker_grace_s=worker_grace,
        pending_timeout_s=pending_timeout,
        retain_results=retain_results,
        retain_seconds=retain_seconds or None,
    )
    local = LocalMaster(
        journal,
        listen=listen,
        advertise=advertise,
        master_id=master_id,
        lease_ttl=lease_ttl,
        token=token,
        worker_token=worker_token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        limits=limits,
        api_limits=ApiLimits(
            max_payload_bytes=max_payload, max_result_bytes=max_result, max_batch_tasks=max_batch
        ),
        net_limits=NetLimits(
            max_connections=max_connections,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            worker_rate=worker_rate,
            worker_burst=2 * worker_rate,
        ),
        snapshot_every=snapshot_every,
        retain_topic_events=retain_topic,
        wait_leader=False,
        gc_freeze=True,  # this process runs the master alone
        busy_poll=busy_poll,
    )
    run_async(_serve(local))


async def _serve(local: object) -> None:
    from mawex.local import LocalMaster

    assert isinstance(local, LocalMaster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await local.start()
    log.info(
        "master serving",
        extra={
            "action": "master_started",
            "url": local.url,
            "listen": ",".join(map(str, local.addresses)),
            "master_id": local.master_id,
        },
    )
    serving = asyncio.create_task(local.serve_forever())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    log.info("master stopping", extra={"action": "master_stopping"})
    await local.stop()
    stopping.cancel()
