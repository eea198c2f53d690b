-- The audit log of every replica, sequenced here (DESIGN §6, §10).
--
-- audit_head is the single row every append locks (SELECT … FOR UPDATE): the batch takes the
-- indices size .. size+n-1, its entries are inserted, and size, frontier and root advance in the
-- same transaction. No SEQUENCE: a rolled-back transaction would leave a gap in the indices.
CREATE TABLE audit_head (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    size     BIGINT NOT NULL CHECK (size >= 0),
    root     BYTEA NOT NULL,      -- RFC 6962 root of the first `size` entries
    frontier BYTEA NOT NULL,      -- roots of the perfect subtrees, largest first (32 bytes each)
    origin   TEXT NOT NULL        -- checkpoint origin line: the log's name, the same on every replica
);
INSERT INTO audit_head (id, size, root, frontier, origin)
VALUES (1, 0, decode('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'hex'), '',
        'keybroker/' || gen_random_uuid() || '/audit');

CREATE TABLE audit_entries (
    idx  BIGINT PRIMARY KEY CHECK (idx >= 0),
    body BYTEA NOT NULL           -- canonical JSON record: the exact bytes that are hashed
);

-- Guardrail: appended entries are never changed or removed through the broker's role. Tamper
-- evidence still comes from the signed checkpoints (a database owner can drop this trigger);
-- this stops a compromised or buggy replica from rewriting history quietly.
CREATE FUNCTION audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_entries_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only();
CREATE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_entries FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_entries FROM CURRENT_USER;
