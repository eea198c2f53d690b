-- Leases are inserted in the same transaction as their release's audit record (DESIGN §6),
-- and carry that record's index.
ALTER TABLE leases ADD COLUMN audit_index BIGINT;
