-- Snapshots: an audience's members frozen for a campaign, each with its arm of the split.

CREATE TABLE snapshots (
    tenant_id        text        NOT NULL,
    snapshot_id      text        NOT NULL,
    -- The idempotency key: one snapshot per request id.
    request_id       text        NOT NULL,
    audience_id      text        NOT NULL,
    audience_version integer     NOT NULL,
    salt             text        NOT NULL,
    -- [{"name": ..., "share_percent": ..., "member_count": ...}] in the arms' order.
    arms             jsonb       NOT NULL,
    member_count     bigint      NOT NULL DEFAULT 0,
    content_hash     text        NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, snapshot_id),
    UNIQUE (tenant_id, request_id),
    FOREIGN KEY (tenant_id, audience_id, audience_version)
        REFERENCES audience_versions (tenant_id, audience_id, version)
);

-- `arm` is the index of the member's arm in `snapshots.arms`.
CREATE TABLE snapshot_members (
    tenant_id   text     NOT NULL,
    snapshot_id text     NOT NULL,
    member_id   text     NOT NULL,
    arm         smallint NOT NULL,
    PRIMARY KEY (tenant_id, snapshot_id, member_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['snapshots', 'snapshot_members'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
