-- The tag catalog: one row per dimension, and every version of its definition.

CREATE TABLE tag_definitions (
    tenant_id       text        NOT NULL,
    dimension       text        NOT NULL,
    current_version integer     NOT NULL,
    state           smallint    NOT NULL DEFAULT 1,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, dimension)
);

CREATE TABLE tag_definition_versions (
    tenant_id    text        NOT NULL,
    dimension    text        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    -- The definition as JSON (rules in protobuf JSON form), exactly as validated.
    body         jsonb       NOT NULL,
    content_hash text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, dimension, version),
    FOREIGN KEY (tenant_id, dimension) REFERENCES tag_definitions (tenant_id, dimension)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tag_definitions', 'tag_definition_versions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
