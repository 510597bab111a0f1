-- Members whose real-time tags are owed a refresh. A fact's transaction adds its member here; the
-- refresh that follows the commit (batched across concurrent requests) deletes the row in its own
-- transaction. A row left behind by a crash is found by the sweeper, so no refresh is ever lost.
CREATE SEQUENCE refresh_queue_seq;

CREATE TABLE refresh_queue (
    tenant_id text        NOT NULL,
    member_id text        NOT NULL,
    -- Which kinds of fact changed (bits of services.tagging.rules.Input; 0 = a new member: all).
    inputs    integer     NOT NULL,
    -- Bumped by every fact, so a refresh deletes only what it saw, never a fact that came after.
    seq       bigint      NOT NULL DEFAULT nextval('refresh_queue_seq'),
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, member_id)
);

ALTER TABLE refresh_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_queue FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_queue
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
