"""The lease loop: acquire, renew, step down; standbys tail the journal meanwhile.

A standby polls the lease every :data:`STANDBY_POLL_S`, and sooner when a client or
worker asked it for the leader: those of a leader that died come at once, and the
journal's presence locks tell the standby whether the holder is gone.

Beside it runs the membership loop: every master, leader or standby, announces
itself in the journal (:meth:`~mawex.journal.base.Journal.announce`) every
``lease_ttl / 3`` seconds and at once when its role changes, and reads back who
else is there (``GET /v1/state``'s ``masters`` and ``standbys``). An
announcement lives :data:`MEMBER_TTL_FACTOR` lease TTLs, so a master that stops
announcing (killed, paused, cut off) drops out of the list soon after its lease
would have lapsed. On a clean stop a master withdraws its announcement.
Membership is advisory: a failed announcement is logged and never touches
leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from mawex.errors import FencedOut, JournalError
from mawex.journal.base import LEADER, STANDBY, Member

if TYPE_CHECKING:
    from mawex.master.engine import Engine

log = logging.getLogger("mawex.master")

#: How often a standby polls the lease (and tails the journal)...
STANDBY_POLL_S = 0.2
#: ...or sooner, this long after its last poll, when a client or worker wanted a
#: leader there: one whose leader just died finds it within a few polls of its own.
STANDBY_WAKE_S = 0.02
#: An announcement lives this many lease TTLs.
MEMBER_TTL_FACTOR = 2.0
#: How often the membership loop looks for a role change.
ROLE_POLL_S = 0.05
#: How long a stopping master tries to withdraw its announcement.
WITHDRAW_TIMEOUT_S = 2.0


async def run_leadership(engine: Engine) -> None:
    """Keep trying to lead; while leading renew the lease, while not, follow the journal."""
    members = asyncio.create_task(run_membership(engine), name="mawex-membership")
    try:
        await _lease_loop(engine)
    finally:
        members.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await members
        await _withdraw(engine)


async def _lease_loop(engine: Engine) -> None:
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
        except Exception:
            # A record this master cannot apply: never let the loop die silently (the
            # master would neither follow the journal nor ever take over). Start over
            # from the snapshot; if the failure repeats, it is logged each time.
            log.exception("cannot follow the journal", extra={"action": "follow_failed"})
            await engine.step_down("cannot follow the journal")
            with contextlib.suppress(Exception):
                await engine.rebuild()
        await _until_next_poll(engine)


async def _until_next_poll(engine: Engine) -> None:
    """Wait :data:`STANDBY_POLL_S`, or :data:`STANDBY_WAKE_S` once a leader was wanted."""
    await asyncio.sleep(STANDBY_WAKE_S)
    wanted = engine.leader_wanted
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STANDBY_POLL_S - STANDBY_WAKE_S):
            await wanted.wait()
    wanted.clear()


def _announced_role(engine: Engine) -> str:
    return LEADER if engine.is_leader else STANDBY


async def run_membership(engine: Engine) -> None:
    """Announce this master every ``lease_ttl / 3`` and on every role change; read the others."""
    ttl = engine.settings.lease_ttl
    interval = ttl / 3
    loop = asyncio.get_running_loop()
    announced: str | None = None
    next_at = 0.0
    failing = False
    while True:
        role = _announced_role(engine)
        if role != announced or loop.time() >= next_at:
            next_at = loop.time() + interval
            member = Member(engine.holder, engine.settings.advertise, role)
            try:
                await engine.journal.announce(member, ttl * MEMBER_TTL_FACTOR)
                announced = role
                members = await engine.journal.members()
            except JournalError as exc:
                if not failing:
                    log.warning(
                        "cannot announce this master: %s", exc, extra={"action": "announce_failed"}
                    )
                failing = True
            else:
                failing = False
                engine.set_members(members)
        await asyncio.sleep(min(ROLE_POLL_S, max(0.0, next_at - loop.time())))


async def _withdraw(engine: Engine) -> None:
    """Remove this master's announcement (clean stop); best effort."""
    member = Member(engine.holder, engine.settings.advertise, _announced_role(engine))
    try:
        async with asyncio.timeout(WITHDRAW_TIMEOUT_S):
            await engine.journal.announce(member, 0)
    except (JournalError, TimeoutError) as exc:
        log.debug("withdrawing the announcement failed: %s", exc)
