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
-- the same way as the total, so no shard starts below zero. `budget_used` is no longer written.
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

ALTER TABLE allowance_shards ENABLE ROW LEVEL SECURITY;
ALTER TABLE allowance_shards FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON allowance_shards
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
