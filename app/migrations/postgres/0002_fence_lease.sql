-- The fence carries a lease (see docs/migration.md): the migrator run holding it and when it
-- ends unless renewed (ms since the epoch, this database's clock).
ALTER TABLE ladder_control ADD COLUMN IF NOT EXISTS lease_holder TEXT;
ALTER TABLE ladder_control ADD COLUMN IF NOT EXISTS lease_until_ms BIGINT;
-- The fence row is keyed by the data layout, not the access path: earlier versions kept one
-- row per path ('pgbouncer', 'dsql') beside 'postgres' for the same database. Fold them in,
-- keeping any fence or pointer they carry.
INSERT INTO ladder_control (tier_id, fenced, moved_to)
SELECT 'postgres', bool_or(fenced), max(moved_to) FROM ladder_control
WHERE tier_id IN ('pgbouncer', 'dsql') HAVING count(*) > 0
ON CONFLICT (tier_id) DO UPDATE SET fenced = ladder_control.fenced OR excluded.fenced,
  moved_to = COALESCE(ladder_control.moved_to, excluded.moved_to);
DELETE FROM ladder_control WHERE tier_id IN ('pgbouncer', 'dsql');
