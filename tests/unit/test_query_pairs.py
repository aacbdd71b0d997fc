"""``wire.api.query_pairs``: the master's one parser of query strings."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

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
