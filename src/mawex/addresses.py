"""Where a master listens, and how clients and workers name it: TCP or a Unix socket.

A master listens on ``HOST:PORT`` (TCP) or ``unix:PATH`` (a Unix domain socket), or
on several of them, comma-separated. A Unix socket serves clients and workers on the
same machine: each message skips the TCP stack (a round trip through the master is
tens of microseconds shorter), and only processes that the socket file's permissions
let write to it can connect.

Clients and workers name a master by URL: ``http(s)://host:port[/prefix]`` (a bare
``host:port`` means ``http``), or ``unix:PATH`` for a Unix socket. The canonical form
of the latter is ``http+unix://`` followed by the path, percent-encoded (as
``requests-unixsocket`` and Docker's clients write it): the form a master advertises
and puts in its ``not_leader`` hints, and :attr:`mawex.Client.masters` lists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from mawex.errors import ConfigError

#: How a Unix socket is written where an address or a master URL is expected.
UNIX_PREFIX: Final = "unix:"
#: The scheme of a master URL for a Unix socket (HTTP over it).
UNIX_SCHEME: Final = "http+unix"
#: The scheme of a worker channel URL on a Unix socket (a WebSocket over it).
WS_UNIX_SCHEME: Final = "ws+unix"
#: The longest socket path Linux takes (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH_BYTES: Final = 107


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address a master listens on: ``host`` and ``port``, or a Unix socket's ``path``."""

    host: str = ""
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def url(self, *, tls: bool = False) -> str:
        """The URL clients and workers use to reach this address (a relative socket path
        made absolute: others do not share this process's working directory)."""
        if self.path is not None:
            return unix_url(os.path.abspath(self.path))
        return f"{'https' if tls else 'http'}://{self}"

    def __str__(self) -> str:
        if self.path is not None:
            return f"{UNIX_PREFIX}{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(listen: str) -> list[ListenAddress]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) or ``unix:PATH``, or several, comma-separated."""
    addresses: list[ListenAddress] = []
    for item in listen.split(","):
        text = item.strip()
        if not text:
            continue
        address = _parse_one(text)
        if address in addresses:
            raise ConfigError(f"--listen names {text!r} twice")
        addresses.append(address)
    if not addresses:
        raise ConfigError("--listen needs HOST:PORT or unix:PATH")
    return addresses


def _parse_one(text: str) -> ListenAddress:
    if text.startswith(UNIX_PREFIX):
        return ListenAddress(path=check_socket_path(text[len(UNIX_PREFIX) :]))
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen takes HOST:PORT or unix:PATH, not {text!r}")
    return ListenAddress(host=host.strip("[]"), port=int(port))


def check_socket_path(path: str) -> str:
    """``path`` if it can name a Unix socket, else :class:`ConfigError`."""
    if not path:
        raise ConfigError("a Unix socket needs a path: unix:/run/mawex/master.sock")
    if "\0" in path:
        raise ConfigError("a Unix socket path cannot hold a NUL character")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"the Unix socket path {path[:60]!r}… is longer than "
            f"{MAX_SOCKET_PATH_BYTES} bytes (the system's limit): choose a shorter one"
        )
    return path


def unix_url(path: str) -> str:
    """The master URL of the Unix socket at ``path``."""
    return f"{UNIX_SCHEME}://{quote(path, safe='')}"


def master_url(text: str) -> str:
    """A master's URL in its canonical form, without a trailing ``/``.

    ``host:port`` becomes ``http://host:port``; ``unix:PATH`` becomes
    ``http+unix://PATH`` (percent-encoded). Raises :class:`ConfigError` on anything else.
    """
    url = text.strip()
    if url.startswith(UNIX_PREFIX):
        return unix_url(check_socket_path(url[len(UNIX_PREFIX) :]))
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        check_socket_path(unquote(parts.netloc))
        if parts.path.strip("/") or parts.query:
            raise ConfigError(
                f"invalid master URL {text!r}: a Unix socket's URL is {UNIX_SCHEME}:// and "
                "the socket's path, percent-encoded (or write unix:PATH)"
            )
        return url.rstrip("/")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid master URL {url!r}: expected http(s)://host:port or unix:PATH")
    return url.rstrip("/")


def socket_path(url: str) -> str | None:
    """The socket path of a ``http+unix://`` (or ``ws+unix://``) URL; None for others."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in (UNIX_SCHEME, WS_UNIX_SCHEME):
        return None
    return unquote(rest.partition("/")[0])


def display_url(url: str) -> str:
    """``url`` as people write it: ``unix:PATH`` for a Unix socket's URL, others as they are."""
    path = socket_path(url)
    return url if path is None else f"{UNIX_PREFIX}{path}"


class UnixListener:
    """A listening, non-blocking Unix socket at ``path``, and its file.

    A socket file left by a master that is gone (nothing accepts on it) is replaced;
    a socket another process listens on, or any other kind of file, is left alone.
    What the system refuses raises :class:`OSError` naming the path. The file gets
    the process's umask: the directory's and the file's permissions decide who may
    connect.
    """

    def __init__(self, path: str, backlog: int) -> None:
        check_socket_path(path)
        where = f"unix:{path}"
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise cannot_listen(where, errno.EEXIST, "a file that is not a socket is there")
            if _accepting(path):
                raise cannot_listen(where, errno.EADDRINUSE, "another process listens there")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            self._inode = os.stat(path).st_ino
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise cannot_listen(where, exc.errno, exc.strerror) from None
        self.path = path
        self.socket = sock

    def close(self) -> None:
        """Close the socket and remove its file (unless another has taken its place)."""
        self.socket.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)


def cannot_listen(where: str, code: int | None, reason: str | None) -> OSError:
    """The error for an address the system will not let a master listen on."""
    return OSError(code or 0, f"cannot listen on {where}: {reason or 'refused'}")


def _accepting(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise cannot_listen(f"unix:{path}", exc.errno, exc.strerror) from None
    finally:
        probe.close()
    return True


__all__ = [
    "UNIX_PREFIX",
    "UNIX_SCHEME",
    "WS_UNIX_SCHEME",
    "ListenAddress",
    "UnixListener",
    "cannot_listen",
    "check_socket_path",
    "display_url",
    "master_url",
    "parse_listen",
    "socket_path",
    "unix_url",
]
