-- Task definitions (versioned), their completions, and what members did towards them: sign-ins,
-- shares, enrolments, progress of counted tasks. A completion is paid into the ledger (its entry) or waits to be claimed;
-- the task's budget row (`budget_used`) is what keeps concurrent completions from overspending.

CREATE TABLE task_definitions (
    tenant_id       text        NOT NULL,
    task_id         text        NOT NULL,
    -- memberops.tasks.v1.TaskKind; fixed for the task's life.
    kind            smallint    NOT NULL CHECK (kind BETWEEN 1 AND 7),
    -- 1 active, 2 retired.
    state           smallint    NOT NULL DEFAULT 1 CHECK (state IN (1, 2)),
    current_version integer     NOT NULL DEFAULT 1,
    -- The current version's budget (0: no limit), kept here so a conditional update enforces it.
    budget_points   bigint      NOT NULL DEFAULT 0 CHECK (budget_points >= 0),
    -- Points paid or reserved by completions so far.
    budget_used     bigint      NOT NULL DEFAULT 0 CHECK (budget_used >= 0),
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id),
    -- The last line of defence: no statement can commit an overspent budget.
    CHECK (budget_points = 0 OR budget_used <= budget_points)
);

CREATE TABLE task_versions (
    tenant_id    text        NOT NULL,
    task_id      text        NOT NULL,
    version      integer     NOT NULL,
    body         jsonb       NOT NULL,
    content_hash text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id, version),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id)
);

CREATE TABLE completions (
    tenant_id         text        NOT NULL,
    completion_id     bigint      GENERATED ALWAYS AS IDENTITY,
    task_id           text        NOT NULL,
    member_id         text        NOT NULL,
    -- The task's calendar day the completion counts on (daily limits).
    day               date        NOT NULL,
    points            bigint      NOT NULL CHECK (points >= 0),
    -- memberops.tasks.v1.CompletionState: 1 paid, 2 claimable, 3 reversed.
    state             smallint    NOT NULL CHECK (state IN (1, 2, 3)),
    source            text        NOT NULL,
    entry_id          bigint,
    reversal_entry_id bigint,
    claim_request_id  text,
    create_time       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, completion_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id),
    FOREIGN KEY (tenant_id, entry_id) REFERENCES ledger_entries (tenant_id, entry_id),
    FOREIGN KEY (tenant_id, reversal_entry_id) REFERENCES ledger_entries (tenant_id, entry_id)
);
CREATE INDEX completions_member ON completions (tenant_id, task_id, member_id, day);
CREATE INDEX completions_claimable ON completions (tenant_id, task_id, member_id, completion_id) WHERE state = 2;
-- A claim's request id pays one completion, once.
CREATE UNIQUE INDEX completions_claim ON completions (tenant_id, claim_request_id)
    WHERE claim_request_id IS NOT NULL;

-- One row per member and task-calendar day signed. `streak` is the streak's length at that day
-- (the day before's plus one, or 1), rewritten for the days after a make-up that joins two runs.
CREATE TABLE sign_ins (
    tenant_id     text        NOT NULL,
    task_id       text        NOT NULL,
    member_id     text        NOT NULL,
    day           date        NOT NULL,
    streak        integer     NOT NULL CHECK (streak >= 1),
    makeup        boolean     NOT NULL DEFAULT false,
    completion_id bigint,
    request_id    text        NOT NULL,
    content_hash  text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id, member_id, day),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id),
    FOREIGN KEY (tenant_id, completion_id) REFERENCES completions (tenant_id, completion_id)
);
CREATE UNIQUE INDEX sign_ins_request ON sign_ins (tenant_id, request_id);

-- One row per member and distinct share target.
CREATE TABLE shares (
    tenant_id     text        NOT NULL,
    task_id       text        NOT NULL,
    member_id     text        NOT NULL,
    target        text        NOT NULL,
    completion_id bigint      NOT NULL,
    request_id    text        NOT NULL,
    content_hash  text        NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id, member_id, target),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id),
    FOREIGN KEY (tenant_id, completion_id) REFERENCES completions (tenant_id, completion_id)
);
CREATE UNIQUE INDEX shares_request ON shares (tenant_id, request_id);

-- Enrolments in purchase tasks counted from enrolment: orders paid in [enrol_time, window_end_time).
CREATE TABLE enrolments (
    tenant_id       text        NOT NULL,
    task_id         text        NOT NULL,
    member_id       text        NOT NULL,
    enrol_time      timestamptz NOT NULL,
    window_end_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, task_id, member_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id)
);

-- What a member has done towards a counted task (items, orders, amount, events; 0/1 for profile
-- and visit tasks). Completions follow from it: floor(measure / target), within the limits.
CREATE TABLE progress (
    tenant_id   text        NOT NULL,
    task_id     text        NOT NULL,
    member_id   text        NOT NULL,
    measure     bigint      NOT NULL DEFAULT 0 CHECK (measure >= 0),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id, member_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES task_definitions (tenant_id, task_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['task_definitions', 'task_versions', 'completions', 'sign_ins', 'shares',
                             'enrolments', 'progress'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
