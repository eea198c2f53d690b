-- Leases are written after their release's audit record (DESIGN §6): the audit log is the
-- durable record of every release, and a lease row carries the index of its record. At start
-- the broker re-inserts from the log the leases a crash kept from reaching this table.
ALTER TABLE leases ADD COLUMN audit_index INTEGER;
