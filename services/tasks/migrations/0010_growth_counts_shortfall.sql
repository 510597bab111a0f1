-- Growth and leaderboards count a reversal for all it takes back, the points already spent (its
-- shortfall) included: counting only what was left let a member keep an order's growth by
-- spending its points before the refund. The covering indexes carry the shortfall too.
DROP INDEX ledger_entries_earned;
CREATE INDEX ledger_entries_earned ON ledger_entries (tenant_id, create_time)
    INCLUDE (member_id, delta, shortfall) WHERE reason IN (1, 2, 6, 7);
DROP INDEX ledger_entries_member_earned;
CREATE INDEX ledger_entries_member_earned ON ledger_entries (tenant_id, member_id, create_time)
    INCLUDE (delta, shortfall) WHERE reason IN (1, 2, 6, 7);

CREATE OR REPLACE FUNCTION raise_level(p_tenant text, p_member text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
DECLARE
    policy    level_policies;
    growth    bigint;
    qualified level_tiers;
    held      level_tiers;
BEGIN
    SELECT * INTO policy FROM level_policies WHERE tenant_id = p_tenant;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT coalesce(sum(delta - shortfall), 0) INTO growth FROM ledger_entries
    WHERE tenant_id = p_tenant AND member_id = p_member AND reason IN (1, 2, 6, 7)
      AND create_time > now() - make_interval(days => policy.window_days);
    SELECT * INTO qualified FROM level_tiers
    WHERE tenant_id = p_tenant AND min_growth <= growth ORDER BY rank DESC LIMIT 1;
    SELECT t.* INTO held FROM member_levels l
    JOIN level_tiers t ON t.tenant_id = l.tenant_id AND t.code = l.code
    WHERE l.tenant_id = p_tenant AND l.member_id = p_member FOR UPDATE OF l;
    IF NOT FOUND THEN
        SELECT * INTO held FROM level_tiers WHERE tenant_id = p_tenant AND rank = 0;
    END IF;
    IF qualified.rank <= held.rank THEN
        RETURN;
    END IF;
    INSERT INTO member_levels (tenant_id, member_id, code, since) VALUES (p_tenant, p_member, qualified.code, now())
    ON CONFLICT (tenant_id, member_id) DO UPDATE SET code = excluded.code, since = excluded.since;
    INSERT INTO feed (tenant_id, kind, member_id, payload)
    VALUES (p_tenant, 1, p_member,
            jsonb_build_object('from_level', held.code, 'to_level', qualified.code, 'upgrade', true,
                               'growth', growth));
END
$$;
