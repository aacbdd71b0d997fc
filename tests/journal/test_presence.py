"""Presence locks beside a SQLite journal: what a free, held or missing lock file says.

Each PresenceLocks opens files of its own, and ``flock`` locks belong to an open
file, so two instances in one process see each other's locks as two processes would.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mawex.journal.presence import RETRY_S, PresenceLocks, PresenceRetry


def _locks(tmp_path: Path, namespace: str = "ns") -> PresenceLocks:
    return PresenceLocks(str(tmp_path / "mawex.db"), namespace)


def test_a_holder_is_gone_only_once_its_lock_is_released(tmp_path: Path) -> None:
    leader, standby = _locks(tmp_path), _locks(tmp_path)
    assert not standby.is_gone("A"), "no file: nothing is known, so not gone"
    assert leader.hold("A")
    assert leader.hold("A"), "holding again is a no-op"
    assert not standby.is_gone("A")
    assert not leader.is_gone("A"), "this instance holds it"
    leader.release_all()
    assert standby.is_gone("A")
    assert standby.is_gone("A"), "looking does not remove the file"
    standby.sweep()
    assert not os.path.exists(standby.path("A"))
    assert not standby.is_gone("A")


def test_namespaces_and_holders_have_files_of_their_own(tmp_path: Path) -> None:
    a, b = _locks(tmp_path, "one"), _locks(tmp_path, "two")
    assert a.hold("A") and b.hold("A")
    assert len({a.path("A"), b.path("A"), a.path("B")}) == 3
    assert not _locks(tmp_path, "one").is_gone("A")
    assert not _locks(tmp_path, "two").is_gone("A")


def test_a_name_held_by_another_process_is_refused_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = _locks(tmp_path), _locks(tmp_path)
    assert first.hold("A")
    with caplog.at_level(logging.WARNING, logger="mawex.journal.presence"):
        assert not second.hold("A")
    assert "presence_lock_failed" in [getattr(r, "action", None) for r in caplog.records]
    assert not _locks(tmp_path).is_gone("A"), "the first still holds it"
    first.release_all()
    assert not second.hold("A"), "not tried again at once: a standby asks every poll"


def test_presence_retry_waits_after_a_failure_and_warns_once_per_run_of_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = 100.0
    retry = PresenceRetry(clock=lambda: now)
    assert retry.due()
    with caplog.at_level(logging.INFO, logger="mawex.journal.presence"):
        retry.failed("A", "refused")
        assert not retry.due()
        now += RETRY_S - 0.001
        assert not retry.due()
        now += 0.001
        assert retry.due()
        retry.failed("A", "refused again")
        assert not retry.due()
        now += RETRY_S
        retry.succeeded()
        assert retry.due()
        retry.failed("A", "refused after a success")
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert actions == ["presence_lock_failed", "presence_lock_held", "presence_lock_failed"]


def test_sweep_removes_the_files_of_gone_holders_only(tmp_path: Path) -> None:
    me, alive, gone = _locks(tmp_path), _locks(tmp_path), _locks(tmp_path)
    assert me.hold("me") and alive.hold("alive") and gone.hold("gone")
    gone.release_all()
    me.sweep()
    assert sorted(os.listdir(me.directory)) == sorted(
        os.path.basename(me.path(h)) for h in ("me", "alive")
    )


def test_no_directory_means_nothing_is_known(tmp_path: Path) -> None:
    locks = _locks(tmp_path)
    locks.sweep()
    assert not locks.is_gone("A")
    assert not os.path.exists(locks.directory)
