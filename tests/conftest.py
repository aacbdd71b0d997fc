"""Shared fixtures: the PostgreSQL and Redis services that journal and integration tests use.

- PostgreSQL at ``MAWEX_TEST_POSTGRESQL`` (default
  ``postgresql://postgres@127.0.0.1:5432/postgres``, a superuser): a template
  database with mawex's schema is created once per session; ``postgresql_url``
  is a fresh clone of it per test, dropped afterwards.
- Redis at ``MAWEX_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``):
  ``redis_namespace`` is a unique namespace prefix per test; every key under
  ``mawex:{<prefix>`` is deleted afterwards, so a test must use namespaces
  starting with it.
- ``sock_dir``: a short temporary directory for Unix sockets.

An unreachable service skips its tests, or fails them when
``MAWEX_REQUIRE_SERVICES=1`` (CI sets it, so a broken service never passes as a skip).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

from mawex.errors import JournalError
from mawex.journal import redact

POSTGRESQL_URL = os.environ.get(
    "MAWEX_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MAWEX_TEST_REDIS", "redis://127.0.0.1:6379/0")
SERVICE_TIMEOUT = 5.0


def service_unavailable(service: str, url: str, reason: BaseException | str) -> NoReturn:
    """Skip the test because ``service`` is unreachable, or fail under MAWEX_REQUIRE_SERVICES=1."""
    if isinstance(reason, BaseException):
        reason = f"{type(reason).__name__}: {reason}"
    message = f"{service} not reachable at {redact(url)}: {reason}"
    if os.environ.get("MAWEX_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (and MAWEX_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def _with_db(url: str, db: str) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


# -- PostgreSQL -------------------------------------------------------------------


async def _pg_admin() -> Any:
    import asyncpg

    return await asyncpg.connect(POSTGRESQL_URL, timeout=SERVICE_TIMEOUT)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _pg_sweep(admin: Any) -> None:
    """Drop the databases of earlier local sessions that were killed before their teardown."""
    if urlsplit(POSTGRESQL_URL).hostname not in (None, "localhost", "127.0.0.1", "::1"):
        return
    rows = await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname ~ '^mawex_(tpl|t)_[0-9]+_[0-9a-f]+$'"
    )
    for row in rows:
        if not _pid_alive(int(row["datname"].split("_")[2])):
            await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')


async def _pg_create_template(name: str) -> None:
    from mawex.journal.postgresql import PostgreSQLJournal

    admin = await _pg_admin()
    try:
        await _pg_sweep(admin)
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    journal = PostgreSQLJournal(_with_db(POSTGRESQL_URL, name))
    await journal.open()
    await journal.close()


async def _pg_drop(name: str) -> None:
    admin = await _pg_admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def postgresql_template() -> Iterator[str]:
    """The name of a session-wide database holding mawex's schema, to clone per test."""
    try:
        import asyncpg
    except ImportError as e:
        service_unavailable("PostgreSQL", POSTGRESQL_URL, f"asyncpg is not installed ({e})")
    name = f"mawex_tpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_create_template(name))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        service_unavailable("PostgreSQL", POSTGRESQL_URL, e)
    except JournalError as e:
        service_unavailable("PostgreSQL", POSTGRESQL_URL, e.__cause__ or e)
    try:
        yield name
    finally:
        asyncio.run(_pg_drop(name))


@pytest.fixture
async def postgresql_url(postgresql_template: str) -> AsyncIterator[str]:
    """The URL of a fresh database (a clone of the template), dropped after the test."""
    name = f"mawex_t_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgresql_template}"')
    finally:
        await admin.close()
    try:
        yield _with_db(POSTGRESQL_URL, name)
    finally:
        await _pg_drop(name)


# -- Redis ----------------------------------------------------------------------


async def _redis_ping() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=SERVICE_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL, once it answered a PING."""
    try:
        import redis
    except ImportError as e:
        service_unavailable("Redis", REDIS_URL, f"redis is not installed ({e})")
    try:
        asyncio.run(_redis_ping())
    except (OSError, TimeoutError, redis.RedisError) as e:
        service_unavailable("Redis", REDIS_URL, e)
    return REDIS_URL


@pytest.fixture
async def redis_namespace(redis_url: str) -> AsyncIterator[str]:
    """A unique namespace prefix; the keys of every namespace starting with it go afterwards."""
    import redis.asyncio as aioredis

    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"mawex:{{{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (a socket's path may not exceed 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mx-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
