"""Journal URLs: what parses, what is refused and why, and which backend each one opens."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mawex.errors import ConfigError
from mawex.journal import (
    DEFAULT_URL,
    JournalURL,
    check_namespace,
    load_queries,
    open_journal,
    parse_journal_url,
    parse_queries,
    redact,
)
from mawex.journal.postgresql import PostgreSQLJournal
from mawex.journal.redis import RedisJournal
from mawex.journal.sqlite import SQLiteJournal

GOOD: list[tuple[str, dict[str, Any]]] = [
    (DEFAULT_URL, {"backend": "sqlite", "path": "./mawex.db", "options": {}}),
    ("sqlite:///mawex.db", {"path": "mawex.db"}),
    ("sqlite:///relative/dir/x.db", {"path": "relative/dir/x.db"}),
    ("sqlite:////var/lib/mawex/x.db", {"path": "/var/lib/mawex/x.db"}),
    ("sqlite:///./my%20file.db", {"path": "./my file.db"}),
    ("SQLite:///x.db", {"scheme": "sqlite", "backend": "sqlite"}),
    ("sqlite:///x.db?synchronous=normal", {"options": {"synchronous": "normal"}}),
    ("sqlite:///x.db?synchronous=FULL", {"options": {"synchronous": "full"}}),
    (
        "postgresql://mawex@db.local:5432/jobs",
        {
            "backend": "postgresql",
            "host": "db.local",
            "port": 5432,
            "db": "jobs",
            "user": "mawex",
            "password": None,
        },
    ),
    (
        "postgres://u:p%40ss@10.0.0.5:6543/mawex?sslmode=require",
        {
            "scheme": "postgres",
            "backend": "postgresql",
            "user": "u",
            "password": "p@ss",
            "port": 6543,
            "options": {"sslmode": "require"},
        },
    ),
    ("postgresql:///mawex", {"host": None, "db": "mawex"}),
    ("postgresql://host", {"host": "host", "db": None, "port": None}),
    ("postgresql://[::1]:5432/db", {"host": "::1", "port": 5432}),
    ("redis://cache:6379/0", {"backend": "redis", "host": "cache", "port": 6379, "db": "0"}),
    ("redis://cache", {"db": "0", "port": None}),
    ("rediss://:secret@cache:6380/2", {"scheme": "rediss", "password": "secret", "db": "2"}),
]

BAD: list[tuple[str, str]] = [
    ("", "empty journal URL"),
    ("   ", "empty journal URL"),
    ("mawex.db", "has no scheme"),
    ("/var/lib/mawex.db", "has no scheme"),
    ("mysql://host/db", "unknown journal URL scheme 'mysql'"),
    ("file:///x.db", "unknown journal URL scheme 'file'"),
    ("sqlite://", "has no file path"),
    ("sqlite:///", "has no file path"),
    ("sqlite://host/x.db", "names a host"),
    ("sqlite:///:memory:", "in-memory SQLite journal is not allowed"),
    ("sqlite:///file::memory:?cache=shared", "in-memory SQLite journal is not allowed"),
    ("sqlite:///data/", "does not name a file"),
    ("sqlite:///x.db?synchronous=off", "must be one of full, normal"),
    ("sqlite:///x.db?journal_mode=delete", "unknown SQLite journal option 'journal_mode'"),
    ("sqlite:///x.db?synchronous=full&synchronous=normal", "repeats a query option"),
    ("sqlite:///x.db?synchronous", "malformed query string"),
    ("sqlite:///x.db#frag", "must not have a fragment"),
    ("postgresql://host:notaport/db", "does not parse"),
    ("postgresql://host:99999/db", "does not parse"),
    ("postgresql://host:0/db", "port 0"),
    ("postgresql://host/a/b", "database name contains '/'"),
    ("redis://", "has no host"),
    ("redis://:6379/0", "has no host"),
    ("redis://host/abc", "database must be a number"),
    ("redis://host:6379/0/1", "database must be a number"),
]


@pytest.mark.parametrize(("url", "expected"), GOOD, ids=[u for u, _ in GOOD])
def test_good_url(url: str, expected: dict[str, Any]) -> None:
    parsed = parse_journal_url(url)
    assert isinstance(parsed, JournalURL)
    for field, value in expected.items():
        assert getattr(parsed, field) == value, field


@pytest.mark.parametrize(("url", "message"), BAD, ids=[u or "<empty>" for u, _ in BAD])
def test_bad_url(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        parse_journal_url(url)


def test_passwords_stay_out_of_errors_and_reprs() -> None:
    with pytest.raises(ConfigError) as info:
        parse_journal_url("postgresql://u:hunter2@host:bad/db")
    assert "hunter2" not in str(info.value)
    assert "u:***@host" in str(info.value)
    parsed = parse_journal_url("redis://:hunter2@host:6379/0")
    assert "hunter2" not in repr(parsed)
    assert parsed.redacted() == "redis://:***@host:6379/0"
    assert redact("sqlite:///./x.db") == "sqlite:///./x.db"
    assert "hunter2" not in repr(open_journal("postgresql://u:hunter2@host/db"))


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("sqlite:///./x.db", SQLiteJournal),
        ("postgresql://u@h/db", PostgreSQLJournal),
        ("postgres://u@h/db", PostgreSQLJournal),
        ("redis://h:6379/0", RedisJournal),
        ("rediss://h:6379/0", RedisJournal),
    ],
)
def test_open_journal_picks_the_backend(url: str, cls: type) -> None:
    journal = open_journal(url, namespace="master-2")
    assert isinstance(journal, cls)
    assert journal.namespace == "master-2"  # type: ignore[attr-defined]


def test_sqlite_synchronous_reaches_the_journal() -> None:
    normal = open_journal("sqlite:////tmp/x.db?synchronous=normal")
    full = open_journal("sqlite:////tmp/x.db")
    assert isinstance(normal, SQLiteJournal) and isinstance(full, SQLiteJournal)
    assert (normal.synchronous, full.synchronous) == ("normal", "full")
    assert normal.path == "/tmp/x.db"


@pytest.mark.parametrize(
    ("url", "driver", "hint"),
    [
        ("postgresql://u@h/db", "asyncpg", "pip install 'mawex[postgres]'"),
        ("redis://h:6379/0", "redis", "pip install 'mawex[redis]'"),
    ],
)
def test_missing_driver_says_what_to_install(
    url: str, driver: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, driver, None)
    with pytest.raises(ConfigError, match=hint.replace("[", r"\[").replace("]", r"\]")) as info:
        open_journal(url)
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize("namespace", ["default", "m1", "Master_2.prod-eu", "x" * 64])
def test_good_namespace(namespace: str) -> None:
    assert check_namespace(namespace) == namespace


@pytest.mark.parametrize(
    "namespace", ["", "-x", ".x", "a b", "a:b", "{a}", "a*", "é", "x" * 65, None, 3]
)
def test_bad_namespace(namespace: object) -> None:
    with pytest.raises(ConfigError, match="invalid master id"):
        check_namespace(namespace)
    with pytest.raises(ConfigError, match="invalid master id"):
        open_journal("sqlite:///./x.db", namespace=namespace)  # type: ignore[arg-type]


def test_named_queries() -> None:
    text = """
-- a file comment
-- name: first
SELECT 1;  -- stays: only whole-line comments go

-- name: second
-- what it does
SELECT 2
FROM t;
"""
    assert parse_queries(text) == {
        "first": "SELECT 1;  -- stays: only whole-line comments go",
        "second": "SELECT 2\nFROM t;",
    }
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    for filename in ("sqlite.sql", "postgresql.sql"):
        queries = load_queries(filename)
        assert {"schema", "read", "read_topic", "trim", "last_offset"} <= set(queries)
        assert all(queries.values())
