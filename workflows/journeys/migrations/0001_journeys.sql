-- The worker's own schema: journey definitions (immutable versions), enrolments (one row per
-- member per entry into a journey, the row that backs "nobody is enrolled twice"), the message log
-- (one row per journey run, member and step, written before the channel is called) and the
-- per-channel send windows of the rate limit.

CREATE TABLE definitions (
    tenant_id    text        NOT NULL,
    journey_key  text        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    content      jsonb       NOT NULL,
    content_hash text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, journey_key, version)
);

CREATE TABLE enrolments (
    tenant_id     text        NOT NULL,
    enrolment_id  bigint      GENERATED ALWAYS AS IDENTITY,
    journey_key   text        NOT NULL,
    version       integer     NOT NULL,
    member_id     text        NOT NULL,
    -- 1 for the member's first entry into this journey, 2 for a re-entry, ...
    entry_number  integer     NOT NULL CHECK (entry_number > 0),
    workflow_id   text        NOT NULL,
    run_id        text        NOT NULL,
    arm           text        NOT NULL CHECK (arm IN ('treated', 'holdout')),
    state         text        NOT NULL DEFAULT 'active'
                  CHECK (state IN ('active', 'completed', 'converted', 'exited', 'stopped')),
    enter_time    timestamptz NOT NULL,
    finish_time   timestamptz,
    convert_time  timestamptz,
    gmv_minor     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, enrolment_id),
    FOREIGN KEY (tenant_id, journey_key, version) REFERENCES definitions (tenant_id, journey_key, version),
    UNIQUE (tenant_id, journey_key, member_id, entry_number)
);
-- At most one running enrolment per member and journey, whatever starts it.
CREATE UNIQUE INDEX enrolments_active ON enrolments (tenant_id, journey_key, member_id) WHERE state = 'active';
-- A retried enrol activity of the same workflow run finds its row.
CREATE UNIQUE INDEX enrolments_run ON enrolments (tenant_id, run_id);

CREATE TABLE messages (
    tenant_id    text        NOT NULL,
    -- The journey run: `{workflow id}#{entry number}` for a member journey.
    journey_run  text        NOT NULL,
    member_id    text        NOT NULL,
    step_id      text        NOT NULL,
    journey_key  text        NOT NULL,
    channel      text        NOT NULL,
    -- sending: claimed, the provider is being called (a row found in this state by a later attempt
    -- has an unknown outcome and becomes 'unknown'; it is never sent again);
    -- retry: the provider certainly did not take it (refused, 429, 503); the next attempt may send;
    -- sent, failed (the provider rejected it for good), unknown, skipped (opted out or unreachable).
    status       text        NOT NULL CHECK (status IN ('sending', 'retry', 'sent', 'failed', 'unknown', 'skipped')),
    detail       text        NOT NULL DEFAULT '',
    provider_id  text        NOT NULL DEFAULT '',
    -- The member-local calendar day of the send, for the per-member daily cap.
    local_day    date        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 1,
    create_time  timestamptz NOT NULL,
    update_time  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, journey_run, member_id, step_id)
);
CREATE INDEX messages_member_day ON messages (tenant_id, member_id, local_day) WHERE status IN ('sending', 'sent', 'unknown');

CREATE TABLE channel_windows (
    tenant_id    text        NOT NULL,
    channel      text        NOT NULL,
    window_start timestamptz NOT NULL,
    sent         integer     NOT NULL,
    PRIMARY KEY (tenant_id, channel, window_start)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['definitions', 'enrolments', 'messages', 'channel_windows'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
