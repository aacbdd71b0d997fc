-- Queries of mawex.journal.postgresql. Every table is keyed by ns, the master id.
-- Offsets are stored as "seq" (OFFSET is an SQL keyword). Lease times are on the
-- server's clock (clock_timestamp()).

-- name: schema_lock
-- Serialises schema creation between masters starting together.
SELECT pg_advisory_xact_lock(hashtext('mawex.journal.schema'));

-- name: schema
CREATE TABLE IF NOT EXISTS mawex_lease (
    ns text PRIMARY KEY,
    holder text,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    url text,
    present_since timestamptz
);
CREATE TABLE IF NOT EXISTS mawex_records (
    ns text NOT NULL,
    seq bigint NOT NULL,
    topic bigint,
    at double precision NOT NULL,
    body bytea NOT NULL,
    epoch bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, seq)
);
-- columns added since a database may have been made: records' writer epoch, and the
-- lease's time its holder took its presence lock (checked first: an ALTER TABLE would
-- lock the table even when it has nothing to do)
DO $$
DECLARE
    added record;
BEGIN
    FOR added IN
        SELECT * FROM (VALUES
            ('mawex_records', 'epoch', 'bigint NOT NULL DEFAULT 0'),
            ('mawex_lease', 'present_since', 'timestamptz')
        ) AS columns (table_name, column_name, definition)
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM information_schema.columns
            WHERE table_schema = current_schema()
                AND table_name = added.table_name
                AND column_name = added.column_name
        ) THEN
            EXECUTE format(
                'ALTER TABLE %I ADD COLUMN %I %s',
                added.table_name, added.column_name, added.definition
            );
        END IF;
    END LOOP;
END
$$;
CREATE INDEX IF NOT EXISTS mawex_records_topic
    ON mawex_records (ns, topic) WHERE topic IS NOT NULL;
CREATE TABLE IF NOT EXISTS mawex_snapshot (
    ns text PRIMARY KEY,
    seq bigint NOT NULL,
    body bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS mawex_members (
    ns text NOT NULL,
    holder text NOT NULL,
    url text,
    role text NOT NULL,
    seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (ns, holder)
);

-- name: ensure_lease_row
-- Every namespace has its lease row from open() on, so writers can always lock it.
INSERT INTO mawex_lease (ns, holder, epoch, expires_at, url)
VALUES ($1, NULL, 0, to_timestamp(0), NULL)
ON CONFLICT (ns) DO NOTHING;

-- name: lock_epoch
-- The fence: taken first in every write transaction; acquire() waits for it.
SELECT epoch FROM mawex_lease WHERE ns = $1 FOR UPDATE;

-- name: write_state
SELECT
    greatest(
        coalesce((SELECT max(seq) FROM mawex_records WHERE ns = $1), 0),
        coalesce((SELECT seq FROM mawex_snapshot WHERE ns = $1), 0)
    ),
    (SELECT seq FROM mawex_snapshot WHERE ns = $1);

-- name: append
-- The fenced append as one statement (one round trip, a transaction of its own). The
-- lease row is locked first (acquire() waits for it; a concurrent acquire that committed
-- meanwhile is seen through the lock), and the records go in only if the epoch is the
-- caller's and the first offset follows the last one. Returns the epoch (NULL without
-- a lease row), the last offset and how many records went in: the caller says which
-- check failed.
WITH lease AS (
    SELECT epoch FROM mawex_lease WHERE ns = $1 FOR UPDATE
), last AS (
    SELECT greatest(
        coalesce((SELECT max(seq) FROM mawex_records WHERE ns = $1), 0),
        coalesce((SELECT seq FROM mawex_snapshot WHERE ns = $1), 0)
    ) AS seq
), inserted AS (
    INSERT INTO mawex_records (ns, seq, topic, at, body, epoch)
    SELECT $1, r.seq, r.topic, r.at, r.body, $6
    FROM unnest($2::bigint[], $3::bigint[], $4::float8[], $5::bytea[]) AS r (seq, topic, at, body)
    WHERE (SELECT epoch FROM lease) = $6 AND (SELECT seq FROM last) + 1 = $2[1]
    RETURNING 1
)
SELECT (SELECT epoch FROM lease), (SELECT seq FROM last), (SELECT count(*) FROM inserted);

-- name: read
SELECT seq, topic, at, body, epoch FROM mawex_records
WHERE ns = $1 AND seq >= $2
ORDER BY seq
LIMIT $3;

-- name: read_topic
SELECT seq, topic, at, body, epoch FROM mawex_records
WHERE ns = $1 AND topic >= $2
ORDER BY topic
LIMIT $3;

-- name: last_offset
SELECT greatest(
    coalesce((SELECT max(seq) FROM mawex_records WHERE ns = $1), 0),
    coalesce((SELECT seq FROM mawex_snapshot WHERE ns = $1), 0)
);

-- name: save_snapshot
INSERT INTO mawex_snapshot (ns, seq, body) VALUES ($1, $2, $3)
ON CONFLICT (ns) DO UPDATE SET seq = excluded.seq, body = excluded.body;

-- name: load_snapshot
SELECT seq, body FROM mawex_snapshot WHERE ns = $1;

-- name: trim
DELETE FROM mawex_records
WHERE ns = $1 AND seq < $2 AND (topic IS NULL OR topic < $3);

-- name: acquire
-- Free, lapsed, ours, or held by a master whose presence lock is free: its session
-- ended since it took the lock, and the server has not restarted since (a restart
-- ends every session: that says nothing about the holder).
UPDATE mawex_lease
SET holder = $2,
    epoch = epoch + 1,
    expires_at = clock_timestamp() + make_interval(secs => $3),
    url = $4,
    present_since = to_timestamp($5)
WHERE ns = $1 AND (
    holder IS NULL OR holder = $2 OR expires_at <= clock_timestamp()
    OR (
        present_since > pg_postmaster_start_time()
        AND pg_try_advisory_xact_lock(hashtextextended(ns || '/' || holder, 0))
    )
)
RETURNING epoch, extract(epoch FROM expires_at)::float8;

-- name: renew
UPDATE mawex_lease
SET expires_at = clock_timestamp() + make_interval(secs => $4),
    present_since = to_timestamp($5)
WHERE ns = $1 AND epoch = $2 AND holder = $3
RETURNING extract(epoch FROM expires_at)::float8;

-- name: hold_presence
-- On a connection of the master's own, held for the journal's life: the lock, and the
-- server time it was taken.
SELECT
    pg_try_advisory_lock(hashtextextended($1 || '/' || $2, 0)),
    extract(epoch FROM clock_timestamp())::float8;

-- name: ping
SELECT 1;

-- name: release
UPDATE mawex_lease SET expires_at = to_timestamp(0) WHERE ns = $1 AND epoch = $2;

-- name: current_lease
SELECT holder, epoch, extract(epoch FROM expires_at)::float8, url
FROM mawex_lease WHERE ns = $1;

-- name: announce
INSERT INTO mawex_members (ns, holder, url, role, seen_at, expires_at)
VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp() + make_interval(secs => $5))
ON CONFLICT (ns, holder) DO UPDATE SET
    url = excluded.url,
    role = excluded.role,
    seen_at = excluded.seen_at,
    expires_at = excluded.expires_at;

-- name: withdraw
DELETE FROM mawex_members WHERE ns = $1 AND holder = $2;

-- name: prune_members
DELETE FROM mawex_members WHERE ns = $1 AND expires_at <= clock_timestamp();

-- name: members
SELECT
    holder,
    url,
    role,
    extract(epoch FROM seen_at)::float8,
    extract(epoch FROM expires_at)::float8,
    greatest(0, extract(epoch FROM clock_timestamp() - seen_at))::float8
FROM mawex_members
WHERE ns = $1 AND expires_at > clock_timestamp()
ORDER BY holder;
