-- Key lifecycle: destruction deadlines, automatic rotation schedule, lease revocations.
-- Times are unix seconds on the broker's clock.
ALTER TABLE keys ADD COLUMN destroy_after INTEGER;      -- set while PENDING_DESTRUCTION
ALTER TABLE keys ADD COLUMN next_rotation_at INTEGER;   -- set while rotation_period is set
ALTER TABLE leases ADD COLUMN revoked_at INTEGER;

-- A revocation denies every DataKeys operation to a job (any issuer) or a principal
-- (issuer '' = any issuer) until expires_at: the end of the longest lease issued before it.
CREATE TABLE lease_revocations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('job', 'principal')),
    issuer     TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX lease_revocations_value ON lease_revocations(value, expires_at);
CREATE INDEX leases_subject ON leases(subject);
CREATE INDEX keys_destroy_after ON keys(destroy_after) WHERE destroy_after IS NOT NULL;
CREATE INDEX keys_next_rotation ON keys(next_rotation_at) WHERE next_rotation_at IS NOT NULL;
