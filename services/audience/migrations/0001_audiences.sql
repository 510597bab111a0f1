-- Audience definitions: one row per audience, and every version of its definition.
-- Evaluation reads tagging's published views (tagging_read.*), never tagging's tables.

CREATE TABLE audiences (
    tenant_id         text        NOT NULL,
    audience_id       text        NOT NULL,
    current_version   integer     NOT NULL,
    -- The request id of the creating call (empty without one): a retry with it returns the audience.
    create_request_id text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    -- Soft delete: the row and its versions stay, the id is not reused.
    delete_time       timestamptz,
    PRIMARY KEY (tenant_id, audience_id)
);

CREATE TABLE audience_versions (
    tenant_id     text        NOT NULL,
    audience_id   text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    display_name  text        NOT NULL DEFAULT '',
    description   text        NOT NULL DEFAULT '',
    -- The rule in protobuf JSON form, exactly as validated.
    rule          jsonb       NOT NULL,
    -- The audiences this version references directly (ids), so a delete can refuse in one lookup.
    referenced    text[]      NOT NULL DEFAULT '{}',
    content_hash  text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, audience_id, version),
    FOREIGN KEY (tenant_id, audience_id) REFERENCES audiences (tenant_id, audience_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audiences', 'audience_versions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
