-- Links: one row per code. Deletes are tombstones (deleted = true) so that the
-- migrator can copy them like any other change; `seq` grows on every change
-- (insert, update, delete) and is the migrator's resumable copy cursor.
CREATE SEQUENCE IF NOT EXISTS ladder_links_seq;
CREATE TABLE IF NOT EXISTS links (
    code        TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    deleted     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS links_seq_idx ON links (seq);
-- Clicks aggregated per UTC day (phases 0-2; ClickHouse takes over from phase 3).
CREATE TABLE IF NOT EXISTS clicks_daily (
    code   TEXT NOT NULL,
    day    TEXT NOT NULL,
    clicks BIGINT NOT NULL,
    PRIMARY KEY (code, day)
);
-- The write fence and cut-over pointer of one tier (see docs/migration.md).
CREATE TABLE IF NOT EXISTS ladder_control (
    tier_id  TEXT PRIMARY KEY,
    fenced   BOOLEAN NOT NULL DEFAULT FALSE,
    moved_to TEXT
);
-- Checkpoints of `ladder-app migrate`, stored in the target tier.
CREATE TABLE IF NOT EXISTS ladder_migrate_checkpoint (
    id    TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
