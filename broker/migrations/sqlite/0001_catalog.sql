-- Key catalog: names, purposes, states, versions, use counters and leases.
-- Key material never appears here: every version is an HSM object labelled kb:<name>:v<n>.
CREATE TABLE keys (
    name                   TEXT PRIMARY KEY NOT NULL,
    purpose                TEXT NOT NULL,
    state                  TEXT NOT NULL,
    labels                 TEXT NOT NULL,           -- JSON object of strings
    hsm_id                 TEXT NOT NULL,
    created_at             INTEGER NOT NULL,        -- unix seconds
    min_decryption_version INTEGER NOT NULL DEFAULT 1,
    rotation_period_secs   INTEGER
);

CREATE TABLE key_versions (
    key_name   TEXT NOT NULL REFERENCES keys(name),
    version    INTEGER NOT NULL,
    state      TEXT NOT NULL,                       -- PENDING_CREATE, ENABLED, DISABLED, DESTROYED
    created_at INTEGER NOT NULL,
    wrap_count INTEGER NOT NULL DEFAULT 0,          -- GCM encryptions under this version (IV budget)
    PRIMARY KEY (key_name, version)
);

CREATE TABLE leases (
    lease_id   TEXT PRIMARY KEY NOT NULL,
    key_name   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    op         TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    job_id     TEXT,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX leases_job ON leases(job_id);
CREATE INDEX leases_expiry ON leases(expires_at);
