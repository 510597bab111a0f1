-- Every member's tags with their history: one row per value per holding period.

CREATE TABLE member_tags (
    tenant_id          text        NOT NULL,
    id                 bigint      GENERATED ALWAYS AS IDENTITY,
    member_id          text        NOT NULL,
    dimension          text        NOT NULL,
    value              text        NOT NULL,
    definition_version integer     NOT NULL,
    source             smallint    NOT NULL,
    -- True for SINGLE-cardinality dimensions: the member holds at most one of their values.
    exclusive          boolean     NOT NULL,
    valid_from         timestamptz NOT NULL,
    valid_to           timestamptz,
    set_by             text        NOT NULL DEFAULT '',
    reason             text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, member_id) REFERENCES members (tenant_id, member_id),
    FOREIGN KEY (tenant_id, dimension) REFERENCES tag_definitions (tenant_id, dimension),
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
-- A member holds a value at most once at a time.
CREATE UNIQUE INDEX member_tags_current ON member_tags (tenant_id, dimension, member_id, value)
    WHERE valid_to IS NULL;
CREATE UNIQUE INDEX member_tags_exclusive ON member_tags (tenant_id, dimension, member_id)
    WHERE valid_to IS NULL AND exclusive;
-- Who holds a value now (audiences), and a member's history.
CREATE INDEX member_tags_value ON member_tags (tenant_id, dimension, value) WHERE valid_to IS NULL;
CREATE INDEX member_tags_member ON member_tags (tenant_id, member_id, valid_from);

ALTER TABLE member_tags ENABLE ROW LEVEL SECURITY;
ALTER TABLE member_tags FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON member_tags
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
