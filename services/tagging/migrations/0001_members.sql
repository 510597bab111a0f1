-- Members: the caller's id, profile facts and free-form attributes, per tenant.
CREATE TABLE members (
    tenant_id        text        NOT NULL,
    member_id        text        NOT NULL,
    gender           smallint    NOT NULL DEFAULT 0,
    birthday         date,
    city             text        NOT NULL DEFAULT '',
    city_tier        smallint    NOT NULL DEFAULT 0,
    register_time    timestamptz,
    register_channel text        NOT NULL DEFAULT '',
    attributes       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    revision         bigint      NOT NULL DEFAULT 1,
    create_time      timestamptz NOT NULL DEFAULT now(),
    update_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, member_id),
    CHECK (jsonb_typeof(attributes) = 'object')
);

ALTER TABLE members ENABLE ROW LEVEL SECURITY;
ALTER TABLE members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON members
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
