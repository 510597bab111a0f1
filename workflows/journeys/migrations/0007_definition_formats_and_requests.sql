-- Definitions that stay loadable: every stored version says which format its content is in, so a
-- reader upgrades the shape of old rows (never re-validating them: a rule tightened since must not
-- make a running member's version unloadable). Rows stored before formats existed are format 1.
ALTER TABLE definitions ADD COLUMN format_version integer NOT NULL DEFAULT 1 CHECK (format_version > 0);

-- JourneyService writes that a retry could double (CreateJourney, UpdateJourney): the first
-- answer of each request id, so a retry returns it and a reuse with other content is refused.
-- The primary key, not a read first, is what makes concurrent duplicates store one version.
CREATE TABLE journey_requests (
    tenant_id    text        NOT NULL,
    request_id   text        NOT NULL,
    -- The RPC and a hash of everything the request said (definition, expected version).
    method       text        NOT NULL,
    request_hash text        NOT NULL,
    journey_key  text        NOT NULL,
    -- The version the request answered with.
    version      integer     NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id)
);

ALTER TABLE journey_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE journey_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON journey_requests
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
