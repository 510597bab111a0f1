-- GetDailyKpis reads a tenant's days: sign-ins by their day, and the ledger's credits and
-- redemptions by when they were written. Earnings already have a covering index by time
-- (ledger_entries_earned); operator adjustments and redemptions, far fewer, get one of their own.
CREATE INDEX sign_ins_day ON sign_ins (tenant_id, day) INCLUDE (member_id);
CREATE INDEX ledger_entries_spent ON ledger_entries (tenant_id, create_time)
    INCLUDE (delta) WHERE reason IN (3, 4);
