"""``mawex worker --concurrency``: the pods and workers one process runs."""

from __future__ import annotations

import pytest

from mawex.errors import ConfigError
from mawex.worker.runner import build_workers, pod_names


def test_one_pod_keeps_its_name() -> None:
    assert pod_names("etl") == ["etl"]


def test_several_pods_are_numbered() -> None:
    assert pod_names("etl", 3) == ["etl-1", "etl-2", "etl-3"]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bad_concurrency_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="concurrency must be a whole number >= 1"):
        pod_names("etl", bad)  # type: ignore[arg-type]


def test_a_derived_pod_name_is_checked() -> None:
    with pytest.raises(ConfigError, match="pod"):
        pod_names("p" * 63, 10)  # "ppp…-10" is over the name limit


def test_one_worker_per_group_and_pod() -> None:
    pool = build_workers(
        "mawex.examples.demo:echo",
        masters="http://127.0.0.1:1",
        groups="a,b",
        pod="svc",
        concurrency=2,
    )
    assert sorted((w.pod, w.group) for w in pool.workers) == [
        ("svc-1", "a"),
        ("svc-1", "b"),
        ("svc-2", "a"),
        ("svc-2", "b"),
    ]
    assert len({id(w.sandbox) for w in pool.workers}) == 4  # a sandbox of its own each
