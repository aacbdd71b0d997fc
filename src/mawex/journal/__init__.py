"""Journal stores, chosen by URL.

==========================================  ==========================================
URL                                         store
==========================================  ==========================================
``sqlite:///./mawex.db`` (the default)      a file relative to the working directory
``sqlite:////var/lib/mawex/mawex.db``       an absolute path (four slashes)
``postgresql://user:pw@host:5432/db``       PostgreSQL (``postgres://`` too), asyncpg
``redis://host:6379/0``                     Redis (``rediss://`` for TLS), redis-py
==========================================  ==========================================

SQLite takes ``?synchronous=full|normal``. ``full`` (the default) fsyncs every
commit: an acknowledged event survives a power loss. ``normal`` fsyncs only at
WAL checkpoints: it survives a crash of any process, not a power loss or a
kernel crash, and appends are several times faster. ``sqlite:///:memory:`` is
refused: masters could not share it and it is lost on exit (use
:class:`~mawex.journal.memory.MemoryJournal` in-process instead). Several
master processes may share one SQLite file on one machine (not over a network
file system).

PostgreSQL and Redis pass their other query options to their driver.

``namespace`` is the master id: independent masters sharing one store see
neither each other's records nor each other's lease.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

from mawex.errors import ConfigError, JournalError
from mawex.journal.base import Journal, Lease, Member, Record, Snapshot

DEFAULT_URL: Final = "sqlite:///./mawex.db"
DEFAULT_NAMESPACE: Final = "default"

#: Namespaces (master ids): 1-64 characters, a letter or digit first, then ``_ . -``.
NAMESPACE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAMESPACE_RE: Final = re.compile(NAMESPACE_PATTERN)

_SCHEMES: Final = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
}
_SQLITE_OPTIONS: Final = {"synchronous": ("full", "normal")}
_INSTALL_HINTS: Final = {
    "postgresql": ("asyncpg", "pip install 'mawex[postgres]'"),
    "redis": ("redis", "pip install 'mawex[redis]'"),
}


@dataclass(frozen=True, slots=True)
class JournalURL:
    """A parsed journal URL; ``backend`` is ``sqlite``, ``postgresql`` or ``redis``."""

    url: str = field(repr=False)
    scheme: str
    backend: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    db: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()

    @property
    def options(self) -> dict[str, str]:
        """The query options as a dict."""
        return dict(self.query)

    def redacted(self) -> str:
        """The URL with its password masked, for logs and errors."""
        return redact(self.url)


def redact(url: str) -> str:
    """``url`` with the password of its user info, if any, replaced by ``***``."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", url)


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is a valid master id, else raise :class:`ConfigError`."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise ConfigError(
            f"invalid master id (journal namespace) {namespace!r}: use 1-64 letters, "
            "digits, '_', '.' or '-', starting with a letter or digit"
        )
    return namespace


def check_batch(records: Sequence[Record]) -> None:
    """Raise :class:`JournalError` unless the offsets of ``records`` are contiguous."""
    if records:
        first = records[0].offset
        for i, record in enumerate(records):
            if record.offset != first + i:
                raise JournalError(
                    f"offsets in a batch must be contiguous: {record.offset} follows "
                    f"{first + i - 1}"
                )


def parse_journal_url(url: str) -> JournalURL:
    """Parse and check a journal URL; raise :class:`ConfigError` saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"empty journal URL; expected e.g. {DEFAULT_URL}")
    url = url.strip()
    shown = redact(url)
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(
            f"journal URL {shown!r} has no scheme; expected e.g. {DEFAULT_URL}, "
            "postgresql://user@host:5432/db or redis://host:6379/0"
        )
    scheme = scheme.lower()
    backend = _SCHEMES.get(scheme)
    if backend is None:
        raise ConfigError(
            f"unknown journal URL scheme {scheme!r} in {shown!r}; "
            f"supported: {', '.join(sorted(_SCHEMES))}"
        )
    if backend == "sqlite":
        return _parse_sqlite(url, scheme, shown)
    return _parse_server(url, scheme, backend, shown)


def _parse_query(query: str, shown: str) -> tuple[tuple[str, str], ...]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise ConfigError(f"journal URL {shown!r} has a malformed query string") from e
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"journal URL {shown!r} repeats a query option")
    return tuple(pairs)


def _parse_sqlite(url: str, scheme: str, shown: str) -> JournalURL:
    rest = url[len(scheme) + 3 :]
    rest, _, query_string = rest.partition("?")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ConfigError(f"journal URL {shown!r} must not have a fragment")
    if not rest or rest == "/":
        raise ConfigError(f"SQLite journal URL {shown!r} has no file path; e.g. {DEFAULT_URL}")
    if not rest.startswith("/"):
        raise ConfigError(
            f"SQLite journal URL {shown!r} names a host; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db (three or four slashes)"
        )
    path = unquote(rest[1:])
    if path == ":memory:" or path.startswith("file:") or "mode=memory" in query_string:
        raise ConfigError(
            "an in-memory SQLite journal is not allowed: masters cannot share it and it is "
            "lost on exit; give a file path (e.g. sqlite:///./mawex.db), or use LocalMaster "
            "for an in-process master"
        )
    if path.endswith("/") or "\x00" in path:
        raise ConfigError(f"SQLite journal URL {shown!r} does not name a file")
    query = _parse_query(query_string, shown)
    for name, value in query:
        allowed = _SQLITE_OPTIONS.get(name)
        if allowed is None:
            raise ConfigError(
                f"unknown SQLite journal option {name!r}; supported: "
                + ", ".join(sorted(_SQLITE_OPTIONS))
            )
        if value.lower() not in allowed:
            raise ConfigError(
                f"SQLite journal option {name}={value!r} must be one of {', '.join(allowed)}"
            )
    query = tuple((k, v.lower()) for k, v in query)
    return JournalURL(url=url, scheme=scheme, backend="sqlite", path=path, query=query)


def _parse_server(url: str, scheme: str, backend: str, shown: str) -> JournalURL:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"journal URL {shown!r} does not parse: {e}") from e
    if parts.fragment:
        raise ConfigError(f"journal URL {shown!r} must not have a fragment")
    if port == 0:
        raise ConfigError(f"journal URL {shown!r} has port 0; use 1-65535")
    host = unquote(parts.hostname) if parts.hostname else None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = _parse_query(parts.query, shown)
    path = unquote(parts.path)
    if backend == "postgresql":
        db = path[1:] if path.startswith("/") else path
        if "/" in db:
            raise ConfigError(f"PostgreSQL journal URL {shown!r}: database name contains '/'")
        return JournalURL(
            url=url,
            scheme=scheme,
            backend=backend,
            host=host,
            port=port,
            db=db or None,
            user=user,
            password=password,
            query=query,
        )
    if not host:
        raise ConfigError(f"Redis journal URL {shown!r} has no host; e.g. redis://127.0.0.1:6379/0")
    db = path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(
            f"Redis journal URL {shown!r}: database must be a number (redis://host:port/0)"
        )
    return JournalURL(
        url=url,
        scheme=scheme,
        backend=backend,
        host=host,
        port=port,
        db=str(int(db)),
        user=user,
        password=password,
        query=query,
    )


def open_journal(url: str = DEFAULT_URL, *, namespace: str = DEFAULT_NAMESPACE) -> Journal:
    """Build the (unopened) journal for ``url``; ``await journal.open()`` before use.

    ``url`` is one of the forms in this module's docstring, e.g.
    ``sqlite:///./mawex.db?synchronous=normal`` (``full``, the default, fsyncs every
    commit; ``normal`` survives a process crash but not a power loss).
    ``namespace`` is the master id (:data:`NAMESPACE_PATTERN`).

    Raises :class:`ConfigError` for a bad URL or namespace, or when the backend's
    driver is not installed (with the ``pip install`` that fixes it).
    """
    parsed = parse_journal_url(url)
    check_namespace(namespace)
    if parsed.backend == "sqlite":
        from mawex.journal.sqlite import SQLiteJournal

        return SQLiteJournal.from_url(parsed, namespace=namespace)
    driver, hint = _INSTALL_HINTS[parsed.backend]
    try:
        importlib.import_module(driver)
    except ImportError as e:
        raise ConfigError(
            f"the {parsed.backend} journal needs the {driver!r} package: {hint}"
        ) from e
    if parsed.backend == "postgresql":
        from mawex.journal.postgresql import PostgreSQLJournal

        return PostgreSQLJournal.from_url(parsed, namespace=namespace)
    from mawex.journal.redis import RedisJournal

    return RedisJournal.from_url(parsed, namespace=namespace)


def load_queries(filename: str) -> dict[str, str]:
    """Load the named queries of ``sql/<filename>``.

    Each query starts with a ``-- name: <name>`` line and runs to the next one;
    other comment lines and blank lines are dropped.
    """
    text = resources.files(__name__).joinpath("sql", filename).read_text(encoding="utf-8")
    return parse_queries(text)


def parse_queries(text: str) -> dict[str, str]:
    """Split SQL text into ``{name: sql}`` at ``-- name: <name>`` headers."""
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        header = re.match(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", line)
        if header:
            name = header.group(1)
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice")
            current = queries[name] = []
        elif current is not None and line.strip() and not line.lstrip().startswith("--"):
            current.append(line.rstrip())
    return {name: "\n".join(lines).strip() for name, lines in queries.items()}


__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_URL",
    "NAMESPACE_PATTERN",
    "Journal",
    "JournalURL",
    "Lease",
    "Member",
    "Record",
    "Snapshot",
    "check_batch",
    "check_namespace",
    "load_queries",
    "open_journal",
    "parse_journal_url",
    "parse_queries",
    "redact",
]
