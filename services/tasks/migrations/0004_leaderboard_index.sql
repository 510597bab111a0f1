-- Leaderboards sum what members earned (tasks, orders, order reversals) in a week or month.
CREATE INDEX ledger_entries_earned ON ledger_entries (tenant_id, create_time)
    INCLUDE (member_id, delta) WHERE reason IN (1, 2, 6);
