-- Same shape as migrations/postgres/0001_init.sql; `seq` comes from a counter row.
CREATE TABLE IF NOT EXISTS ladder_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO ladder_seq (id, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS links (
    code        TEXT PRIMARY KEY,
    target      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS links_seq_idx ON links (seq);
CREATE TABLE IF NOT EXISTS clicks_daily (
    code   TEXT NOT NULL,
    day    TEXT NOT NULL,
    clicks INTEGER NOT NULL,
    PRIMARY KEY (code, day)
);
CREATE TABLE IF NOT EXISTS ladder_control (
    tier_id  TEXT PRIMARY KEY,
    fenced   INTEGER NOT NULL DEFAULT 0,
    moved_to TEXT
);
CREATE TABLE IF NOT EXISTS ladder_migrate_checkpoint (
    id    TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
