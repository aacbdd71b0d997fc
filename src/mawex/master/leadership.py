"""The lease loop: acquire, renew, step down; standbys tail the journal meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mawex.errors import FencedOut, JournalError

if TYPE_CHECKING:
    from mawex.master.engine import Engine

log = logging.getLogger("mawex.master")

STANDBY_POLL_S = 0.2


async def run_leadership(engine: Engine) -> None:
    """Keep trying to lead; while leading renew the lease, while not, follow the journal."""
    settings = engine.settings
    ttl = settings.lease_ttl
    while True:
        if engine.is_leader and engine.lease is not None:
            await asyncio.sleep(ttl / 3)
            lease = engine.lease
            if lease is None or not engine.is_leader:
                continue
            try:
                engine.lease = await engine.journal.renew(lease, ttl)
                engine.leader_seen = engine.lease
                engine.stats["lease_renewals"] += 1
            except FencedOut as exc:
                await engine.step_down(f"lease lost: {exc}")
            except JournalError as exc:
                # keep leading only while the lease we hold is surely still ours
                if engine.clock() >= lease.expires_at - ttl / 3:
                    await engine.step_down(f"cannot renew the lease: {exc}")
                else:
                    log.warning("lease renewal failed: %s", exc, extra={"action": "renew_failed"})
            continue
        try:
            acquired = await engine.journal.acquire(engine.holder, ttl, settings.advertise)
            if acquired is not None:
                await engine.become_leader(acquired)
                continue
            engine.leader_seen = await engine.journal.current_lease()
            await engine.catch_up()
        except JournalError as exc:
            log.warning("journal unavailable: %s", exc, extra={"action": "journal_unavailable"})
        await asyncio.sleep(STANDBY_POLL_S)
