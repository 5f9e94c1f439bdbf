-- The fence carries a lease (same as migrations/postgres/0002_fence_lease.sql).
ALTER TABLE ladder_control ADD COLUMN lease_holder TEXT;
ALTER TABLE ladder_control ADD COLUMN lease_until_ms INTEGER;
