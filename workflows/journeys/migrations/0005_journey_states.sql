-- A journey's state: draft -> active -> paused -> archived. Only an active journey enrols; a
-- paused one holds its running members before their next step; an archived one takes nobody new.
-- Every journey starts as a draft, the shipped ones too, and so do journeys stored before states
-- existed: nothing messages a customer until an operator activates it.

CREATE TABLE journey_states (
    tenant_id    text        NOT NULL,
    journey_key  text        NOT NULL,
    state        text        NOT NULL DEFAULT 'draft'
                 CHECK (state IN ('draft', 'active', 'paused', 'archived')),
    -- The version that runs (enrols while active); 0 while the journey was never activated.
    live_version integer     NOT NULL DEFAULT 0 CHECK (live_version >= 0),
    -- Grows with every change of state or live version.
    revision     bigint      NOT NULL DEFAULT 1 CHECK (revision > 0),
    update_time  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, journey_key)
);

ALTER TABLE journey_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE journey_states FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journey_states
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
