"""The Redis journal (redis-py asyncio, Redis 6.2 or newer).

Every write is one Lua script (run with EVALSHA), so the fence check (the
namespace's epoch) and the write are atomic. Lease expiry is on the Redis
server's clock (``TIME`` inside the scripts); ``Lease.expires_at`` is in the
server's time. All keys of a namespace start with ``mawex:{namespace}:`` (see
the key constants below); the braces are a Redis Cluster hash tag, so a
namespace's keys share one slot as multi-key scripts require.

Durability caveat: Redis acknowledges a write before it is on disk unless told
otherwise. mawex's "never lose an acknowledged task" guarantee holds only with
``appendonly yes`` and ``appendfsync always``; with ``appendfsync everysec`` a
crash of the Redis server may lose the last second of acknowledged events, and
RDB snapshots alone may lose minutes. A replica does not help: replication is
asynchronous, and a failover to a replica can lose acknowledged writes. The
journal logs a warning at open if the server reports ``appendonly no``.

Presence: while its journal is open, a master keeps one pub/sub connection
subscribed to its own channel (:data:`PRESENCE_CHANNEL` + holder), subscribed
before its lease can name it. The server drops the subscription when the
connection closes: at once when the master's process ends. ``acquire`` and
``renew`` record in the lease the server's ``run_id`` if they count the caller's
subscriber (``presence_run``); a standby's ``acquire`` takes an unexpired lease
whose holder has no subscriber on that same server run. After a server restart
(or a failover to a replica) the run differs and proves nothing; a holder whose
subscriber is not counted subscribes again before its next renewal.

``trim`` deletes at most :data:`TRIM_CHUNK` records per script run, so a large
trim does not stall the server; if the caller is fenced out between two chunks
the records already deleted were below the snapshot, which is what trim may
delete anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from mawex.errors import FencedOut, JournalError
from mawex.journal import JournalURL, check_batch, check_namespace, redact
from mawex.journal.base import Lease, Member, Record, Snapshot
from mawex.journal.presence import PresenceRetry

log = logging.getLogger(__name__)
_warned_volatile: set[str] = set()

#: The prefix of every key of a namespace (``KEY_PREFIX.format(namespace)``).
KEY_PREFIX: Final = "mawex:{{{}}}:"
#: Hash: ``holder``, ``epoch``, ``expires_us`` (server clock, microseconds), ``url``, and
#: ``presence_run``: the server's ``run_id`` when the holder's presence was last seen.
LEASE_KEY: Final = "lease"
#: Hash: ``last``, the newest offset ever appended.
META_KEY: Final = "meta"
#: Hash: offset (decimal) -> packed record (see :data:`RECORD_HEADER`) + body.
RECORDS_KEY: Final = "records"
#: Hash: holder -> JSON ``{"role", ["url"], "seen_us", "expires_us"}`` (server clock).
MEMBERS_KEY: Final = "members"
#: Sorted set: every offset, scored by offset (for ``read``).
LOG_KEY: Final = "log"
#: Sorted set: offsets of records without a topic offset, scored by offset (for ``trim``).
PLAIN_KEY: Final = "plain"
#: Sorted set: offsets of topic records, scored by topic offset (``read_topic``, ``trim``).
TOPIC_KEY: Final = "topic"
#: Hash: ``offset`` and ``body`` of the snapshot.
SNAPSHOT_KEY: Final = "snapshot"
#: Pub/sub channel (after the key prefix, before the holder): a master subscribes to
#: its own while its journal is open, so the server counts one subscriber per live one.
PRESENCE_CHANNEL: Final = "presence:"

#: A stored record: flags (:data:`HAS_TOPIC`, :data:`HAS_EPOCH`), topic offset, ``at``,
#: the writer's epoch; then the body.
RECORD_HEADER: Final = struct.Struct("<Bqdq")
#: The header of records written before records carried their epoch (flags 0 or 1).
RECORD_HEADER_V1: Final = struct.Struct("<?qd")
HAS_TOPIC: Final = 1
HAS_EPOCH: Final = 2
#: The most records one ``trim`` script run deletes.
TRIM_CHUNK: Final = 5000
#: Seconds to wait for the server on connect and on each command.
CONNECT_TIMEOUT: Final = 10.0
COMMAND_TIMEOUT: Final = 30.0
#: Seconds a presence subscription may take before the lease goes on without it.
PRESENCE_TIMEOUT: Final = 1.0

_OK, _FENCED, _BAD_OFFSET = 0, 1, 2
#: What a lease script counted of the caller's presence subscription.
_COUNTED, _NOT_COUNTED, _CANNOT_COUNT = 1, 0, -1

_FENCE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if current ~= tonumber(ARGV[1]) then return {1, current} end
"""

# KEYS: lease meta records log plain topic; ARGV: epoch first n (value topic){n}
_APPEND = (
    _FENCE
    + """
local first = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
if n == 0 then return {0, last} end
if first ~= last + 1 then return {2, last} end
for i = 0, n - 1 do
    local off = string.format('%d', first + i)
    local topic = ARGV[5 + 2 * i]
    redis.call('HSET', KEYS[3], off, ARGV[4 + 2 * i])
    redis.call('ZADD', KEYS[4], off, off)
    if topic == '' then
        redis.call('ZADD', KEYS[5], off, off)
    else
        redis.call('ZADD', KEYS[6], topic, off)
    end
end
redis.call('HSET', KEYS[2], 'last', string.format('%d', first + n - 1))
return {0, first + n - 1}
"""
)

# KEYS: index records; ARGV: from limit -> {offset, value, offset, value, ...}
_READ = """
local offs = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
local out = {}
for i, off in ipairs(offs) do
    out[2 * i - 1] = off
    out[2 * i] = redis.call('HGET', KEYS[2], off)
end
return out
"""

# KEYS: lease meta snapshot; ARGV: epoch offset body
_SAVE_SNAPSHOT = (
    _FENCE
    + """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
if tonumber(ARGV[2]) > last then return {2, last} end
redis.call('HSET', KEYS[3], 'offset', ARGV[2], 'body', ARGV[3])
return {0, 0}
"""
)

# KEYS: lease snapshot records log plain topic; ARGV: epoch before keep_topic_from chunk
# Topic offsets grow with offsets, so the topic records to delete are a prefix of TOPIC_KEY.
_TRIM = (
    _FENCE
    + """
local snap = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
local before = math.min(tonumber(ARGV[2]), snap + 1)
local chunk = tonumber(ARGV[4])
local deleted = 0
local plain = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. string.format('%d', before),
    'LIMIT', 0, chunk)
for _, off in ipairs(plain) do
    redis.call('HDEL', KEYS[3], off)
    redis.call('ZREM', KEYS[4], off)
    redis.call('ZREM', KEYS[5], off)
end
deleted = #plain
if deleted < chunk then
    local topics = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. ARGV[3],
        'LIMIT', 0, chunk - deleted)
    for _, off in ipairs(topics) do
        if tonumber(off) >= before then break end
        redis.call('HDEL', KEYS[3], off)
        redis.call('ZREM', KEYS[4], off)
        redis.call('ZREM', KEYS[6], off)
        deleted = deleted + 1
    end
end
return {0, deleted}
"""
)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# Presence: the server counts the subscribers of a holder's channel; a count of 0 on
# the server run that saw the holder subscribed means its connection closed. pcall:
# a user without INFO or PUBSUB gets no presence, and leases that only lapse.
_PRESENCE = """
local function server_run()
    local info = redis.pcall('INFO', 'server')
    if type(info) ~= 'string' then return nil end
    return string.match(info, 'run_id:(%x+)')
end
local function subscribers(holder)
    local reply = redis.pcall('PUBSUB', 'NUMSUB', ARGV[1] .. holder)
    if type(reply) ~= 'table' or reply.err then return nil end
    return tonumber(reply[2])
end
local function mark_presence(holder)
    local run = server_run()
    local count = subscribers(holder)
    if run and count and count > 0 then
        redis.call('HSET', KEYS[1], 'presence_run', run)
        return 1
    end
    redis.call('HDEL', KEYS[1], 'presence_run')
    if run and count then return 0 end
    return -1
end
"""

# KEYS: lease; ARGV: channel_prefix holder ttl_us has_url url
#   -> {0} or {1, epoch, expires_us, counted}
_ACQUIRE = (
    _NOW
    + _PRESENCE
    + """
local held = redis.call('HMGET', KEYS[1], 'holder', 'expires_us', 'presence_run')
if held[1] and held[1] ~= ARGV[2] and tonumber(held[2]) > now then
    if not held[3] or held[3] ~= server_run() or subscribers(held[1]) ~= 0 then
        return {0}
    end
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local expires = string.format('%.0f', now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'holder', ARGV[2], 'expires_us', expires)
if ARGV[4] == '1' then
    redis.call('HSET', KEYS[1], 'url', ARGV[5])
else
    redis.call('HDEL', KEYS[1], 'url')
end
return {1, epoch, expires, mark_presence(ARGV[2])}
"""
)

# KEYS: lease; ARGV: channel_prefix epoch holder ttl_us -> {0} or {1, expires_us, counted}
_RENEW = (
    _NOW
    + _PRESENCE
    + """
local held = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if held[1] ~= ARGV[3] or tonumber(held[2]) ~= tonumber(ARGV[2]) then return {0} end
local expires = string.format('%.0f', now + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'expires_us', expires)
return {1, expires, mark_presence(ARGV[3])}
"""
)

# KEYS: members; ARGV: holder ttl_us role has_url url
_ANNOUNCE = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    local m = {role = ARGV[3], seen_us = string.format('%.0f', now),
        expires_us = string.format('%.0f', now + ttl)}
    if ARGV[4] == '1' then m['url'] = ARGV[5] end
    redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(m))
else
    redis.call('HDEL', KEYS[1], ARGV[1])
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
    if tonumber(cjson.decode(all[i + 1])['expires_us']) <= now then
        redis.call('HDEL', KEYS[1], all[i])
    end
end
return 0
"""
)

# KEYS: members -> {now_us, holder, value, holder, value, ...} of unexpired members
_MEMBERS = (
    _NOW
    + """
local out = {string.format('%.0f', now)}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
    if tonumber(cjson.decode(all[i + 1])['expires_us']) > now then
        out[#out + 1] = all[i]
        out[#out + 1] = all[i + 1]
    end
end
return out
"""
)

# KEYS: lease; ARGV: epoch
_RELEASE = """
if tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') == tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], 'expires_us', '0')
end
return 0
"""


@dataclass(frozen=True, slots=True)
class _Keys:
    lease: str
    meta: str
    records: str
    log: str
    plain: str
    topic: str
    snapshot: str
    members: str
    presence: str

    @classmethod
    def of(cls, namespace: str) -> _Keys:
        prefix = KEY_PREFIX.format(namespace)
        return cls(
            *(
                prefix + name
                for name in (
                    LEASE_KEY,
                    META_KEY,
                    RECORDS_KEY,
                    LOG_KEY,
                    PLAIN_KEY,
                    TOPIC_KEY,
                    SNAPSHOT_KEY,
                    MEMBERS_KEY,
                    PRESENCE_CHANNEL,
                )
            )
        )


def _pack(record: Record, epoch: int) -> bytes:
    topic = record.topic
    flags = HAS_EPOCH | (HAS_TOPIC if topic is not None else 0)
    return RECORD_HEADER.pack(flags, topic or 0, record.at, epoch) + record.body


def _unpack(offset: bytes, value: bytes) -> Record:
    if value[0] & HAS_EPOCH:
        flags, topic, at, epoch = RECORD_HEADER.unpack_from(value)
        body = value[RECORD_HEADER.size :]
    else:
        flags, topic, at = RECORD_HEADER_V1.unpack_from(value)
        epoch, body = 0, value[RECORD_HEADER_V1.size :]
    return Record(int(offset), topic if flags & HAS_TOPIC else None, at, body, epoch)


class _Presence:
    """This process's presence: one pub/sub connection, subscribed to the channel of
    each lease holder that used this journal (see the module docstring)."""

    def __init__(self, journal: RedisJournal) -> None:
        self._journal = journal
        self._pubsub: PubSub | None = None
        self._channels: set[str] = set()
        self._lock = asyncio.Lock()
        self._retry = PresenceRetry()

    async def hold(self, holder: str) -> None:
        """Subscribe to ``holder``'s channel unless already subscribed; on failure the
        lease goes on without presence (and only lapses)."""
        channel = self._journal.keys.presence + holder
        if channel in self._channels or not self._retry.due():
            return
        async with self._lock:
            if channel in self._channels:
                return
            try:
                await asyncio.wait_for(self._subscribe(channel), PRESENCE_TIMEOUT)
            except (RedisError, OSError, TimeoutError) as e:
                await self._drop()
                self._retry.failed(holder, f"{type(e).__name__}: {e}")

    async def _subscribe(self, channel: str) -> None:
        if self._pubsub is None:
            self._pubsub = self._journal._require_open().pubsub()
        pubsub = self._pubsub
        await pubsub.subscribe(channel)
        # the confirmation: the server counts this subscriber from now on
        while True:
            message = await pubsub.get_message(timeout=PRESENCE_TIMEOUT)
            if message is None:
                raise TimeoutError(f"no confirmation of the subscription to {channel!r}")
            if message["type"] == "subscribe" and message["channel"] == channel.encode():
                break
        self._channels.add(channel)

    async def counted(self, holder: str, count: int) -> None:
        """What a lease script counted of ``holder``'s subscription (see ``_PRESENCE``)."""
        if count == _COUNTED:
            self._retry.succeeded()
        elif count == _NOT_COUNTED:
            # its connection was closed, or the server restarted: start over on a new one
            async with self._lock:
                await self._drop()
        elif count == _CANNOT_COUNT and self._retry.due():
            self._retry.failed(holder, "the server refuses INFO or PUBSUB to this user")

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._channels.clear()
        if pubsub is not None:
            try:
                await asyncio.wait_for(pubsub.aclose(), PRESENCE_TIMEOUT)  # type: ignore[no-untyped-call]
            except (RedisError, OSError, TimeoutError) as e:
                log.debug("closing a presence subscription: %s", e)

    async def close(self) -> None:
        """Unsubscribe from every channel (by closing the connection)."""
        async with self._lock:
            await self._drop()


class RedisJournal:
    """A journal in Redis (see the module docstring)."""

    def __init__(self, url: str, *, namespace: str = "default") -> None:
        self.url = url
        self.namespace = check_namespace(namespace)
        self.keys = _Keys.of(namespace)
        self._client: aioredis.Redis | None = None
        self._closed = False
        self._scripts: dict[str, AsyncScript] = {}
        self._presence = _Presence(self)

    @classmethod
    def from_url(cls, url: JournalURL, *, namespace: str = "default") -> RedisJournal:
        """The journal for a parsed ``redis://`` URL."""
        return cls(url.url, namespace=namespace)

    def __repr__(self) -> str:
        return f"RedisJournal({redact(self.url)!r}, namespace={self.namespace!r})"

    def _error(self, e: BaseException) -> JournalError:
        return JournalError(f"Redis journal {redact(self.url)}: {type(e).__name__}: {e}")

    def _require_open(self) -> aioredis.Redis:
        client = self._client
        if client is None:
            raise JournalError(f"{self!r} is {'closed' if self._closed else 'not open'}")
        return client

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self._require_open()
        try:
            return await self._scripts[name](keys=keys, args=args, client=client)
        except (RedisError, OSError, TimeoutError) as e:
            raise self._error(e) from e

    async def _command(self, name: str, *args: Any) -> Any:
        client = self._require_open()
        try:
            return await client.execute_command(name, *args)  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as e:
            raise self._error(e) from e

    def _check(self, reply: Sequence[Any], epoch: int, what: str) -> int:
        """Raise for a fenced or misplaced write; return the reply's value."""
        code, value = int(reply[0]), int(reply[1])
        if code == _FENCED:
            raise FencedOut(f"epoch {epoch} is fenced out: the journal's epoch is {value}")
        if code == _BAD_OFFSET:
            raise JournalError(f"{what} does not follow the last offset {value}")
        return value

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            client = aioredis.Redis.from_url(
                self.url,
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
            )
        except (ValueError, RedisError) as e:
            raise self._error(e) from e
        self._client = client
        self._closed = False
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("append", _APPEND),
                ("read", _READ),
                ("save_snapshot", _SAVE_SNAPSHOT),
                ("trim", _TRIM),
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("announce", _ANNOUNCE),
                ("members", _MEMBERS),
            )
        }
        try:
            await self._command("PING")
            await self._warn_if_volatile(client)
        except BaseException:
            await self.close()
            self._closed = False
            raise

    async def _warn_if_volatile(self, client: aioredis.Redis) -> None:
        try:
            config: dict[Any, Any] = await client.config_get("appendonly")
        except RedisError:
            return  # CONFIG may be disabled on managed servers
        volatile = config.get(b"appendonly", config.get("appendonly")) in (b"no", "no")
        if volatile and self.url not in _warned_volatile:
            _warned_volatile.add(self.url)
            log.warning(
                "Redis at %s runs with appendonly no: acknowledged tasks can be lost on a "
                "Redis crash; set appendonly yes and appendfsync always",
                redact(self.url),
            )

    async def close(self) -> None:
        await self._presence.close()
        client, self._client = self._client, None
        self._closed = True
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError) as e:
                log.debug("closing %r: %s", self, e)

    # -- records --------------------------------------------------------------

    async def append(self, records: Sequence[Record], epoch: int) -> None:
        check_batch(records)
        first = records[0].offset if records else 0
        args: list[Any] = [epoch, first, len(records)]
        for record in records:
            args.append(_pack(record, epoch))
            args.append(b"" if record.topic is None else record.topic)
        k = self.keys
        reply = await self._script(
            "append", [k.lease, k.meta, k.records, k.log, k.plain, k.topic], args
        )
        self._check(reply, epoch, f"offset {first}")

    async def _read(self, index: str, start: int, limit: int) -> list[Record]:
        if limit <= 0:
            self._require_open()
            return []
        flat = await self._script("read", [index, self.keys.records], [start, limit])
        return [_unpack(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def read(self, from_offset: int, limit: int) -> list[Record]:
        return await self._read(self.keys.log, from_offset, limit)

    async def read_topic(self, from_topic: int, limit: int) -> list[Record]:
        return await self._read(self.keys.topic, from_topic, limit)

    async def last_offset(self) -> int:
        last = await self._command("HGET", self.keys.meta, "last")
        return int(last or 0)

    async def save_snapshot(self, snapshot: Snapshot, epoch: int) -> None:
        k = self.keys
        reply = await self._script(
            "save_snapshot",
            [k.lease, k.meta, k.snapshot],
            [epoch, snapshot.offset, snapshot.body],
        )
        self._check(reply, epoch, f"snapshot offset {snapshot.offset}")

    async def load_snapshot(self) -> Snapshot | None:
        offset, body = await self._command("HMGET", self.keys.snapshot, "offset", "body")
        return None if offset is None else Snapshot(int(offset), bytes(body))

    async def trim(self, before_offset: int, keep_topic_from: int, epoch: int) -> int:
        k = self.keys
        keys = [k.lease, k.snapshot, k.records, k.log, k.plain, k.topic]
        total = 0
        while True:
            reply = await self._script(
                "trim", keys, [epoch, before_offset, keep_topic_from, TRIM_CHUNK]
            )
            deleted = self._check(reply, epoch, "trim")
            total += deleted
            if deleted < TRIM_CHUNK:
                return total

    # -- lease ----------------------------------------------------------------

    async def acquire(self, holder: str, ttl: float, url: str | None) -> Lease | None:
        await self._presence.hold(holder)
        reply = await self._script(
            "acquire",
            [self.keys.lease],
            [
                self.keys.presence,
                holder,
                round(ttl * 1e6),
                "0" if url is None else "1",
                url or "",
            ],
        )
        if not int(reply[0]):
            return None
        await self._presence.counted(holder, int(reply[3]))
        return Lease(holder, int(reply[1]), int(reply[2]) / 1e6, url)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        await self._presence.hold(lease.holder)
        reply = await self._script(
            "renew",
            [self.keys.lease],
            [self.keys.presence, lease.epoch, lease.holder, round(ttl * 1e6)],
        )
        if not int(reply[0]):
            raise FencedOut(f"the lease of epoch {lease.epoch} was lost")
        await self._presence.counted(lease.holder, int(reply[2]))
        return Lease(lease.holder, lease.epoch, int(reply[1]) / 1e6, lease.url)

    async def release(self, lease: Lease) -> None:
        await self._script("release", [self.keys.lease], [lease.epoch])

    async def current_lease(self) -> Lease | None:
        holder, epoch, expires, url = await self._command(
            "HMGET", self.keys.lease, "holder", "epoch", "expires_us", "url"
        )
        if holder is None:
            return None
        return Lease(
            holder.decode(),
            int(epoch),
            int(expires) / 1e6,
            None if url is None else url.decode(),
        )

    # -- membership -------------------------------------------------------------

    async def announce(self, member: Member, ttl: float) -> None:
        await self._script(
            "announce",
            [self.keys.members],
            [
                member.holder,
                max(0, round(ttl * 1e6)),
                member.role,
                "0" if member.url is None else "1",
                member.url or "",
            ],
        )

    async def members(self) -> list[Member]:
        reply = await self._script("members", [self.keys.members], [])
        now = int(reply[0]) / 1e6
        members = []
        for i in range(1, len(reply), 2):
            value = json.loads(reply[i + 1])
            seen = int(value["seen_us"]) / 1e6
            members.append(
                Member(
                    reply[i].decode(),
                    value.get("url"),
                    value["role"],
                    seen,
                    int(value["expires_us"]) / 1e6,
                    max(0.0, now - seen),
                )
            )
        members.sort(key=lambda m: m.holder)
        return members


__all__ = [
    "KEY_PREFIX",
    "LEASE_KEY",
    "LOG_KEY",
    "MEMBERS_KEY",
    "META_KEY",
    "PLAIN_KEY",
    "PRESENCE_CHANNEL",
    "RECORDS_KEY",
    "SNAPSHOT_KEY",
    "TOPIC_KEY",
    "RedisJournal",
]
