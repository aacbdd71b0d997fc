-- Queries of mawex.journal.sqlite. Every table is keyed by ns, the master id.
-- Offsets are stored as "seq" (OFFSET is an SQL keyword).

-- name: schema
CREATE TABLE IF NOT EXISTS mawex_lease (
    ns TEXT PRIMARY KEY,
    holder TEXT,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    url TEXT
);
CREATE TABLE IF NOT EXISTS mawex_records (
    ns TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic INTEGER,
    at REAL NOT NULL,
    body BLOB NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, seq)
);
CREATE INDEX IF NOT EXISTS mawex_records_topic
    ON mawex_records (ns, topic) WHERE topic IS NOT NULL;
CREATE TABLE IF NOT EXISTS mawex_snapshot (
    ns TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS mawex_members (
    ns TEXT NOT NULL,
    holder TEXT NOT NULL,
    url TEXT,
    role TEXT NOT NULL,
    seen_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (ns, holder)
);

-- name: records_columns
PRAGMA table_info(mawex_records);

-- name: add_epoch_column
-- Files made before records carried their writer's epoch.
ALTER TABLE mawex_records ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;

-- name: write_state
-- The epoch and the last offset, read inside the write transaction.
SELECT
    coalesce((SELECT epoch FROM mawex_lease WHERE ns = :ns), 0),
    max(
        coalesce((SELECT max(seq) FROM mawex_records WHERE ns = :ns), 0),
        coalesce((SELECT seq FROM mawex_snapshot WHERE ns = :ns), 0)
    ),
    (SELECT seq FROM mawex_snapshot WHERE ns = :ns);

-- name: insert_record
INSERT INTO mawex_records (ns, seq, topic, at, body, epoch) VALUES (?, ?, ?, ?, ?, ?);

-- name: read
SELECT seq, topic, at, body, epoch FROM mawex_records
WHERE ns = ? AND seq >= ?
ORDER BY seq
LIMIT ?;

-- name: read_topic
SELECT seq, topic, at, body, epoch FROM mawex_records
WHERE ns = ? AND topic >= ?
ORDER BY topic
LIMIT ?;

-- name: last_offset
SELECT max(
    coalesce((SELECT max(seq) FROM mawex_records WHERE ns = :ns), 0),
    coalesce((SELECT seq FROM mawex_snapshot WHERE ns = :ns), 0)
);

-- name: save_snapshot
INSERT INTO mawex_snapshot (ns, seq, body) VALUES (?, ?, ?)
ON CONFLICT (ns) DO UPDATE SET seq = excluded.seq, body = excluded.body;

-- name: load_snapshot
SELECT seq, body FROM mawex_snapshot WHERE ns = ?;

-- name: trim
DELETE FROM mawex_records
WHERE ns = ? AND seq IN (
    SELECT seq FROM mawex_records
    WHERE ns = ? AND seq < ? AND (topic IS NULL OR topic < ?)
    ORDER BY seq LIMIT ?
);

-- name: get_lease
SELECT holder, epoch, expires_at, url FROM mawex_lease WHERE ns = ?;

-- name: put_lease
INSERT INTO mawex_lease (ns, holder, epoch, expires_at, url) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (ns) DO UPDATE SET
    holder = excluded.holder,
    epoch = excluded.epoch,
    expires_at = excluded.expires_at,
    url = excluded.url;

-- name: renew_lease
UPDATE mawex_lease SET expires_at = ?
WHERE ns = ? AND epoch = ? AND holder = ?;

-- name: release_lease
UPDATE mawex_lease SET expires_at = 0
WHERE ns = ? AND epoch = ?;

-- name: announce
INSERT INTO mawex_members (ns, holder, url, role, seen_at, expires_at)
VALUES (:ns, :holder, :url, :role, :now, :expires_at)
ON CONFLICT (ns, holder) DO UPDATE SET
    url = excluded.url,
    role = excluded.role,
    seen_at = excluded.seen_at,
    expires_at = excluded.expires_at;

-- name: withdraw
DELETE FROM mawex_members WHERE ns = :ns AND holder = :holder;

-- name: prune_members
DELETE FROM mawex_members WHERE ns = :ns AND expires_at <= :now;

-- name: members
SELECT holder, url, role, seen_at, expires_at FROM mawex_members
WHERE ns = ? AND expires_at > ?
ORDER BY holder;
