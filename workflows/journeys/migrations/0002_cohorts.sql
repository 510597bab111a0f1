-- Broadcast journeys: one cohort per journey and snapshot (the row that backs "started once"), its
-- members (the cohort's enrolment rows: where each member is in the journey and when it may go
-- on), and its batches (what each batch activity did, so a retried one repeats nothing). Messages
-- gain the status `queued`: claimed by a batch before the provider is handed it.

CREATE TABLE cohorts (
    tenant_id     text        NOT NULL,
    cohort_id     bigint      GENERATED ALWAYS AS IDENTITY,
    journey_key   text        NOT NULL,
    version       integer     NOT NULL,
    snapshot_id   text        NOT NULL,
    workflow_id   text        NOT NULL,
    -- The workflow's first run (continue-as-new keeps it), so a retried start finds its own row.
    first_run_id  text        NOT NULL,
    state         text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'completed', 'stopped')),
    start_time    timestamptz NOT NULL,
    finish_time   timestamptz,
    PRIMARY KEY (tenant_id, cohort_id),
    FOREIGN KEY (tenant_id, journey_key, version) REFERENCES definitions (tenant_id, journey_key, version),
    -- One cohort per journey and snapshot, however its workflow was started.
    UNIQUE (tenant_id, journey_key, snapshot_id)
);

-- No foreign key to cohorts: a million referential checks per broadcast buy nothing, the rows are
-- written only by their cohort's own activities.
CREATE TABLE cohort_members (
    tenant_id    text        NOT NULL,
    cohort_id    bigint      NOT NULL,
    member_id    text        NOT NULL,
    -- The journey's holdout (the per-journey bucket member journeys use too).
    holdout      boolean     NOT NULL,
    -- The member's arm in the snapshot.
    snapshot_arm text        NOT NULL,
    state        text        NOT NULL DEFAULT 'active'
                 CHECK (state IN ('active', 'completed', 'converted', 'exited', 'stopped')),
    -- The index of the step the member takes next (the number of steps once it has taken them
    -- all), and from when ('infinity' once it has taken them all).
    position     smallint    NOT NULL DEFAULT 0,
    due_time     timestamptz NOT NULL,
    -- False while the member waits to arrive at that step (a wait before it): the funnel counts
    -- it as entering the step when it gets there.
    arrived      boolean     NOT NULL DEFAULT true,
    enter_time   timestamptz NOT NULL,
    finish_time  timestamptz,
    convert_time timestamptz,
    gmv_minor    bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, cohort_id, member_id)
);
-- The next batch: active members whose time has come, earliest first.
CREATE INDEX cohort_members_due ON cohort_members (tenant_id, cohort_id, due_time) WHERE state = 'active';

CREATE TABLE cohort_batches (
    tenant_id   text        NOT NULL,
    cohort_id   bigint      NOT NULL,
    -- The workflow's number for the activity call; a retry of the call has the same one.
    seq         integer     NOT NULL CHECK (seq >= 0),
    -- A batch goes in parts of up to a thousand members, several at a time, each with its row.
    part        smallint    NOT NULL DEFAULT 0 CHECK (part >= 0),
    -- claimed: its sends are claimed in the message log and the provider may be being called;
    -- done: everything it did is committed and `figures` is final.
    state       text        NOT NULL CHECK (state IN ('claimed', 'done')),
    -- What the batch did, as the funnel counts it: {"step:hello:sent": 4980, ...}.
    figures     jsonb       NOT NULL DEFAULT '{}',
    -- claimed: the members whose sends it holds, [[member id, position, channel], ...]; the load
    -- of a snapshot page: {"next_page_token": ...}.
    detail      jsonb       NOT NULL DEFAULT '{}',
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, cohort_id, seq, part)
);

ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('queued', 'sending', 'retry', 'sent', 'failed', 'unknown', 'skipped'));
DROP INDEX messages_member_day;
CREATE INDEX messages_member_day ON messages (tenant_id, member_id, local_day)
    WHERE status IN ('queued', 'sending', 'sent', 'unknown');

-- A broadcast fills cohort_members and messages faster than autovacuum's ANALYZE follows (a
-- minute's nap), so its activities refresh their statistics as the cohort grows; the role they run
-- under may.
GRANT MAINTAIN ON cohort_members, messages TO memberops_app;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['cohorts', 'cohort_members', 'cohort_batches'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
