-- Key catalog shared by every broker replica: names, purposes, states, versions, use counters,
-- leases and lease revocations. Key material never appears here: every version is an HSM object
-- labelled kb:<name>:v<n> on the token all replicas share.
-- Times are unix seconds on the brokers' clocks. Names compare bytewise (COLLATE "C") so that a
-- prefix listing is a range scan whatever the database's locale.
CREATE TABLE keys (
    name                   TEXT COLLATE "C" PRIMARY KEY,
    purpose                TEXT NOT NULL,
    state                  TEXT NOT NULL,
    labels                 TEXT NOT NULL,           -- JSON object of strings
    hsm_id                 TEXT NOT NULL,
    created_at             BIGINT NOT NULL,
    min_decryption_version BIGINT NOT NULL DEFAULT 1,
    rotation_period_secs   BIGINT,
    destroy_after          BIGINT,                  -- set while PENDING_DESTRUCTION
    next_rotation_at       BIGINT                   -- set while rotation_period is set
);
CREATE INDEX keys_destroy_after ON keys(destroy_after) WHERE destroy_after IS NOT NULL;
CREATE INDEX keys_next_rotation ON keys(next_rotation_at) WHERE next_rotation_at IS NOT NULL;

CREATE TABLE key_versions (
    key_name   TEXT COLLATE "C" NOT NULL REFERENCES keys(name),
    version    BIGINT NOT NULL,
    state      TEXT NOT NULL,                       -- PENDING_CREATE, ENABLED, DISABLED, DESTROYED
    created_at BIGINT NOT NULL,
    wrap_count BIGINT NOT NULL DEFAULT 0,           -- GCM encryptions under this version (IV budget)
    PRIMARY KEY (key_name, version)
);

CREATE TABLE leases (
    lease_id   TEXT PRIMARY KEY,
    key_name   TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    op         TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    job_id     TEXT,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX leases_job ON leases(job_id);
CREATE INDEX leases_subject ON leases(subject);
CREATE INDEX leases_expiry ON leases(expires_at);

-- A revocation denies every DataKeys operation to a job (any issuer) or a principal
-- (issuer '' = any issuer) until expires_at: the end of the longest lease issued before it.
CREATE TABLE lease_revocations (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('job', 'principal')),
    issuer     TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX lease_revocations_value ON lease_revocations(value, expires_at);
