"""The public API: every name in ``mawex.__all__`` resolves, and the list is sorted."""

from __future__ import annotations

import mawex


def test_every_exported_name_resolves_and_the_list_is_sorted() -> None:
    assert mawex.__all__ == sorted(mawex.__all__)
    for name in mawex.__all__:
        assert getattr(mawex, name) is not None, name


def test_the_contract_names_are_exported() -> None:
    for name in (
        "Client",
        "AsyncClient",
        "LocalMaster",
        "Task",
        "TaskResult",
        "Rejected",
        "NotLeader",
        "TaskFailed",
    ):
        assert name in mawex.__all__, name
    assert issubclass(mawex.NotLeader, mawex.MawexError)
    assert issubclass(mawex.TaskCancelled, mawex.TaskFailed)
