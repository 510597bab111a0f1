-- Incremental recompute (issue 25): when each member's value of an evaluated dimension can next
-- change by time alone ("active" until the last order + 90 days, an order leaving a 365-day window,
-- a birthday). The scheduled recompute evaluates only the members whose time has come and those
-- with facts recorded since the dimension's previous recompute (the feed, as recompute_marks finds
-- them), so a member whose value cannot change by time holds no row here. Written by the recompute
-- only, for the members it evaluated; a writer of facts does nothing more.
CREATE TABLE recompute_due (
    tenant_id text        NOT NULL,
    dimension text        NOT NULL,
    member_id text        NOT NULL,
    due_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, dimension, member_id)
);

-- The members whose time has come: one index range per dimension.
CREATE INDEX recompute_due_at ON recompute_due (tenant_id, dimension, due_at);

ALTER TABLE recompute_due ENABLE ROW LEVEL SECURITY;
ALTER TABLE recompute_due FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recompute_due
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

-- The definition version whose due times the previous recompute stored: a recompute of another
-- version (or after a mark written before this migration, NULL) evaluates every member.
ALTER TABLE recompute_marks ADD COLUMN definition_version integer;
