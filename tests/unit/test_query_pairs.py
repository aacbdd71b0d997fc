"""``wire.api.query_pairs``: the master's one parser of query strings, and the
checks of query parameters built on it."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from mawex.errors import Rejected
from mawex.server import tasks
from mawex.server.app import query_error
from mawex.wire.api import CACHED_QUERY_BYTES, query_pairs


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"wait=30",
        b"from=5&limit=100&wait=0.5",
        b"a=&b=1&a=2",
        b"q=a+b%20c&empty",
        b"caf%C3%A9=%FF",
        b"x" * CACHED_QUERY_BYTES + b"=1&wait=2",
    ],
)
def test_pairs_are_those_of_parse_qsl_with_blank_values(query: bytes) -> None:
    expected = tuple(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    assert query_pairs(query) == expected
    assert query_pairs(query) == expected  # asked again (remembered when short)


def test_different_queries_do_not_share_an_answer() -> None:
    assert query_pairs(b"wait=1") == (("wait", "1"),)
    assert query_pairs(b"wait=2") == (("wait", "2"),)
    assert query_pairs(b"wait=1") == (("wait", "1"),)


@pytest.mark.parametrize("long", [False, True])
def test_a_query_refused_once_is_refused_every_time_and_per_path(long: bool) -> None:
    """The master's query checks remember short queries; the answers stay the same."""
    padding = b"&wait=1" if not long else b"&" + b"x" * CACHED_QUERY_BYTES + b"=1"
    unknown = b"colour=red" + padding
    for _ in range(3):
        error = query_error("/v1/tasks", unknown)
        assert isinstance(error, Rejected) and "'colour'" in str(error)
    assert query_error("/v1/tasks", b"wait=1&wait=2") is not query_error(
        "/v1/tasks", b"wait=1&wait=2"
    )  # a new error each time: each request's own
    assert query_error("/v1/tasks", b"wait=1") is None
    assert query_error("/v1/state", b"wait=1") is not None  # another path, other names
    assert query_error("/v1/results", b"from=1&wait=1") is None


def test_a_bad_wait_is_refused_every_time() -> None:
    for _ in range(3):
        with pytest.raises(Rejected, match="'wait' must be a number"):
            tasks._wait(b"wait=soon")
    assert tasks._wait(b"wait=2.5") == 2.5
    assert tasks._wait(b"wait=2.5") == 2.5
    assert tasks._wait(b"x" * CACHED_QUERY_BYTES + b"=1&wait=3") == 3.0
