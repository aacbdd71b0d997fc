"""Listen addresses and master URLs, TCP and Unix sockets (real sockets on a temp dir)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mawex.addresses import (
    MAX_SOCKET_PATH_BYTES,
    ListenAddress,
    UnixListener,
    display_url,
    master_url,
    parse_listen,
    socket_path,
    unix_url,
)
from mawex.errors import ConfigError


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:7070", [ListenAddress("127.0.0.1", 7070)]),
        ("[::1]:0", [ListenAddress("::1", 0)]),
        ("unix:/run/mawex/m.sock", [ListenAddress(path="/run/mawex/m.sock")]),
        ("unix:rel.sock", [ListenAddress(path="rel.sock")]),
        (
            " 0.0.0.0:80 , unix:/tmp/a b.sock,",
            [ListenAddress("0.0.0.0", 80), ListenAddress(path="/tmp/a b.sock")],
        ),
    ],
)
def test_parse_listen(listen: str, expected: list[ListenAddress]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("", "needs HOST:PORT or unix:PATH"),
        (" , ", "needs HOST:PORT or unix:PATH"),
        ("7070", "not '7070'"),
        ("host:http", "not 'host:http'"),
        ("host:65536", "not 'host:65536'"),
        ("unix:", "a Unix socket needs a path"),
        ("unix:/tmp/a\0b", "NUL"),
        ("unix:/" + "x" * MAX_SOCKET_PATH_BYTES, "longer than 107 bytes"),
        ("unix:/tmp/a.sock,unix:/tmp/a.sock", "names 'unix:/tmp/a.sock' twice"),
    ],
)
def test_parse_listen_refuses(listen: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_listen(listen)


def test_listen_address_urls() -> None:
    assert ListenAddress("127.0.0.1", 80).url() == "http://127.0.0.1:80"
    assert ListenAddress("::1", 443).url(tls=True) == "https://[::1]:443"
    assert str(ListenAddress("::1", 443)) == "[::1]:443"
    unix = ListenAddress(path="/tmp/m s.sock")
    assert unix.url() == "http+unix://%2Ftmp%2Fm%20s.sock"
    assert str(unix) == "unix:/tmp/m s.sock"
    relative = ListenAddress(path="m.sock")
    assert socket_path(relative.url()) == os.path.join(os.getcwd(), "m.sock")
    assert str(relative) == "unix:m.sock"


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("m1:8000/", "http://m1:8000"),
        ("https://m1/prefix/", "https://m1/prefix"),
        ("unix:/tmp/m.sock", "http+unix://%2Ftmp%2Fm.sock"),
        (" unix:./m.sock ", "http+unix://.%2Fm.sock"),
        ("http+unix://%2Ftmp%2Fm.sock/", "http+unix://%2Ftmp%2Fm.sock"),
    ],
)
def test_master_url(given: str, url: str) -> None:
    assert master_url(given) == url


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("ftp://m1", "expected http"),
        ("http://", "expected http"),
        ("unix:", "needs a path"),
        ("http+unix://", "needs a path"),
        ("http+unix://%2Ftmp%2Fm.sock/v1/tasks", "percent-encoded"),
    ],
)
def test_master_url_refuses(given: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        master_url(given)


def test_display_url() -> None:
    assert display_url(unix_url("/tmp/a b.sock")) == "unix:/tmp/a b.sock"
    assert display_url("http://m1:80") == "http://m1:80"
    assert display_url("unknown") == "unknown"


def test_socket_path() -> None:
    assert socket_path(unix_url("/tmp/a b%.sock")) == "/tmp/a b%.sock"
    assert socket_path("ws+unix://%2Ftmp%2Fw.sock/v1/worker") == "/tmp/w.sock"
    assert socket_path("http://m1:80") is None
    assert socket_path("unix:/tmp/m.sock") is None  # not a canonical URL


def _accepts(path: Path) -> bool:
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(str(path))
    except OSError:
        return False
    finally:
        client.close()
    return True


def test_unix_listener_listens_and_removes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "m.sock"
    listener = UnixListener(str(path), 8)
    try:
        assert _accepts(path)
        assert not listener.socket.getblocking()
    finally:
        listener.close()
    assert not path.exists()


def test_unix_listener_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "m.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a master killed with -9
    listener = UnixListener(str(path), 8)
    try:
        assert _accepts(path)
    finally:
        listener.close()


def test_unix_listener_refuses_a_live_socket(tmp_path: Path) -> None:
    path = tmp_path / "m.sock"
    first = UnixListener(str(path), 8)
    try:
        with pytest.raises(OSError, match="another process listens there"):
            UnixListener(str(path), 8)
        assert _accepts(path)  # the first one is untouched
    finally:
        first.close()


def test_unix_listener_leaves_other_files_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="a file that is not a socket is there"):
        UnixListener(str(path), 8)
    assert path.read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        UnixListener(str(tmp_path / "missing" / "m.sock"), 8)


def test_unix_listener_close_spares_a_successor(tmp_path: Path) -> None:
    """A master replaced on the same path (its file unlinked and bound again) must not
    lose its socket file when the old one closes late."""
    path = tmp_path / "m.sock"
    old = UnixListener(str(path), 8)
    os.unlink(path)
    new = UnixListener(str(path), 8)
    try:
        old.close()
        assert _accepts(path)
    finally:
        new.close()
    assert not path.exists()
