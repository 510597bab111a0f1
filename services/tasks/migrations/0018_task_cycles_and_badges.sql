-- Task cycles and badges (issue 23).

-- Cycles: a counted task's progress is kept per cycle, named by the cycle's first day in the
-- task's zone (a Monday, the 1st of a month; 0001-01-01 for a task whose validity period is one
-- cycle), and a counted order remembers the cycle it counted in, so its refund takes back there.
ALTER TABLE progress ADD COLUMN cycle_start date NOT NULL DEFAULT '0001-01-01';
ALTER TABLE progress DROP CONSTRAINT progress_pkey;
ALTER TABLE progress ADD PRIMARY KEY (tenant_id, task_id, member_id, cycle_start);
ALTER TABLE purchase_orders ADD COLUMN cycle_start date NOT NULL DEFAULT '0001-01-01';

-- Badges: definitions by their natural key, and the badges members hold, each once, awarded in
-- the transaction of the completion or sign-in that earned it.

CREATE TABLE badges (
    tenant_id    text        NOT NULL,
    badge_id     text        NOT NULL,
    display_name text        NOT NULL,
    description  text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, badge_id)
);

CREATE TABLE member_badges (
    tenant_id  text        NOT NULL,
    member_id  text        NOT NULL,
    badge_id   text        NOT NULL,
    -- What awarded it: `task <task_id>`, `streak <task_id> <n> days`.
    source     text        NOT NULL,
    award_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, member_id, badge_id),
    FOREIGN KEY (tenant_id, badge_id) REFERENCES badges (tenant_id, badge_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['badges', 'member_badges'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
