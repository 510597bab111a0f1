-- The dispatcher (workflows/dispatcher/): how far each dispatcher has read tagging's and audience's
-- feeds, which entry events it started member journeys for, and the entry event of each enrolment.

-- The feed entry that enrolled the member (`tagging:{cursor}`, `audience:{cursor}`); empty for a
-- run started by hand. One enrolment per journey and entry event, however often it is replayed,
-- also for journeys that allow re-entry.
ALTER TABLE enrolments ADD COLUMN entry_event_id text NOT NULL DEFAULT '';
CREATE UNIQUE INDEX enrolments_entry_event ON enrolments (tenant_id, entry_event_id, journey_key)
    WHERE entry_event_id <> '';
-- The dispatcher reads the enrolments of the members whose events it dispatches.
CREATE INDEX enrolments_member ON enrolments (tenant_id, member_id);

-- The report (workflows/journeys/report.py) reads a journey's messages by step.
CREATE INDEX messages_journey ON messages (tenant_id, journey_key, step_id);

-- A dispatcher's position in each feed, written after the entries before it were dispatched.
CREATE TABLE dispatch_cursors (
    tenant_id   text        NOT NULL,
    -- The dispatcher's workflow id (`dispatcher/{tenant}` under `make up`).
    dispatcher  text        NOT NULL,
    feed        text        NOT NULL CHECK (feed IN ('tagging', 'audience')),
    -- The last entry dispatched; '' for the beginning of the feed.
    cursor      text        NOT NULL,
    update_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, dispatcher, feed)
);

-- One row per journey run the dispatcher started (or found running) for an entry event: a replayed
-- entry is recognised without asking Temporal, and a run not yet enrolled still gets the member's
-- later events.
CREATE TABLE dispatches (
    tenant_id      text        NOT NULL,
    journey_key    text        NOT NULL,
    entry_event_id text        NOT NULL,
    member_id      text        NOT NULL,
    workflow_id    text        NOT NULL,
    run_id         text        NOT NULL,
    dispatch_time  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, entry_event_id, journey_key)
);
CREATE INDEX dispatches_member ON dispatches (tenant_id, member_id, dispatch_time);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['dispatch_cursors', 'dispatches'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
