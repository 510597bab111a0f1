-- Allowances: a counted amount (a task's budget, a coupon template's stock) split over shard rows,
-- so concurrent takers rarely wait on one row lock (services/tasks/allowance/). What an owner has
-- left is the sum of its shards' `remaining`; what it used is sum(granted) - sum(remaining).

CREATE TABLE allowance_shards (
    tenant_id text     NOT NULL,
    -- Whose allowance: 'task:<task_id>', 'coupon:<template_id>', ...
    owner     text     NOT NULL,
    shard     smallint NOT NULL CHECK (shard >= 0),
    -- What this shard can still give: no statement can commit a shard below zero.
    remaining bigint   NOT NULL CHECK (remaining >= 0),
    -- What increases and decreases of the total put into this shard (takes and give-backs leave it).
    granted   bigint   NOT NULL,
    PRIMARY KEY (tenant_id, owner, shard)
);

-- Every task's budget moves to an allowance of 32 shards ('task:<task_id>'): its total the budget,
-- or 10^18 (no limit) when the budget is 0; what the task used (`budget_used`) taken already, split
-- the same way as the total, so no shard starts below zero. `budget_used` goes (with its CHECK): a
-- budget is its allowance from here on, the table's CHECK on each shard its last line of defence.
-- Every tenant's tasks: the table forces row-level security even on its owner, so not for this.
ALTER TABLE task_definitions NO FORCE ROW LEVEL SECURITY;
INSERT INTO allowance_shards (tenant_id, owner, shard, remaining, granted)
SELECT d.tenant_id, 'task:' || d.task_id, s.shard,
       (t.total / 32 + (s.shard < t.total % 32)::int) - (d.budget_used / 32 + (s.shard < d.budget_used % 32)::int),
       t.total / 32 + (s.shard < t.total % 32)::int
FROM task_definitions d
CROSS JOIN LATERAL (SELECT CASE WHEN d.budget_points = 0 THEN 1000000000000000000
                                ELSE d.budget_points END AS total) t
CROSS JOIN generate_series(0, 31) AS s(shard);
ALTER TABLE task_definitions FORCE ROW LEVEL SECURITY;
ALTER TABLE task_definitions DROP COLUMN budget_used;

ALTER TABLE allowance_shards ENABLE ROW LEVEL SECURITY;
ALTER TABLE allowance_shards FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON allowance_shards
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));

-- A take in one round trip (services/tasks/allowance/allowance.py says why it is exact). First from
-- one shard that covers it and that no other transaction holds, without waiting; else every shard
-- locked in shard order, drawn on from the fullest, or nothing when their sum is short. The first
-- attempt runs in a block of its own: a row its pick locked and then found short (changed by a
-- commit since the statement began) stays locked otherwise, and a transaction holding one shard
-- while it waits for all of them can close a deadlock with another doing the same.
CREATE FUNCTION take_allowance(p_owner text, p_amount bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint;
    v_part bigint;
    r record;
BEGIN
    BEGIN
        WITH p AS MATERIALIZED (
            SELECT shard FROM tasks.allowance_shards
            WHERE owner = p_owner AND remaining >= p_amount
            ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
        UPDATE tasks.allowance_shards a SET remaining = a.remaining - p_amount
        FROM p WHERE a.owner = p_owner AND a.shard = p.shard;
        IF FOUND THEN
            RETURN true;
        END IF;
        RAISE SQLSTATE 'MA001';
    EXCEPTION WHEN SQLSTATE 'MA001' THEN
        NULL;
    END;
    SELECT sum(s.remaining) INTO v_left
    FROM (SELECT remaining FROM tasks.allowance_shards WHERE owner = p_owner ORDER BY shard FOR UPDATE) s;
    IF v_left IS NULL OR v_left < p_amount THEN
        RETURN false;
    END IF;
    v_left := p_amount;
    FOR r IN SELECT shard, remaining FROM tasks.allowance_shards
             WHERE owner = p_owner AND remaining > 0 ORDER BY remaining DESC, shard LOOP
        EXIT WHEN v_left = 0;
        v_part := least(r.remaining, v_left);
        UPDATE tasks.allowance_shards SET remaining = remaining - v_part
        WHERE owner = p_owner AND shard = r.shard;
        v_left := v_left - v_part;
    END LOOP;
    RETURN true;
END $$;
