-- The log's one checkpoint signing key and its newest checkpoint (DESIGN §6, §10).
--
-- audit_signing_key records, once for the log's whole life, which HSM key pair signs its
-- checkpoints: the pair's CKA_ID (the label alone is not unique when replicas race) and its
-- public key. The first replica to start writes it under an advisory lock; every replica after
-- that uses exactly this pair and refuses to start when its token holds another.
CREATE TABLE audit_signing_key (
    id            SMALLINT PRIMARY KEY CHECK (id = 1),
    hsm_object_id BYTEA NOT NULL,
    public_key    BYTEA NOT NULL CHECK (length(public_key) = 32),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by    TEXT NOT NULL
);
-- A key change would be a new log for auditors: no replica may do it quietly.
CREATE FUNCTION audit_signing_key_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_signing_key is written once (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_signing_key_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_signing_key
    FOR EACH ROW EXECUTE FUNCTION audit_signing_key_fixed();

-- The newest signed checkpoint (C2SP signed note), written by the publisher; every replica
-- serves it and copies it into its tiles directory once its mirror holds `size` records.
CREATE TABLE audit_checkpoint (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL CHECK (size >= 0),
    note TEXT NOT NULL
);
