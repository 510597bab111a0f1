-- Membership levels by growth value (points earned in a rolling window: tasks and orders net of
-- their reversals), and the tasks feed that reports level changes under the outbox contract.

CREATE TABLE level_policies (
    tenant_id     text        NOT NULL PRIMARY KEY,
    version       integer     NOT NULL DEFAULT 1,
    window_days   integer     NOT NULL CHECK (window_days BETWEEN 1 AND 3650),
    period_months smallint    NOT NULL CHECK (period_months IN (1, 2, 3, 4, 6, 12)),
    grace_days    integer     NOT NULL CHECK (grace_days BETWEEN 0 AND 365),
    time_zone     text        NOT NULL DEFAULT '',
    content_hash  text        NOT NULL,
    update_time   timestamptz NOT NULL DEFAULT now()
);

-- Rank 0 is the base level (min_growth 0); ranks rise with min_growth.
CREATE TABLE level_tiers (
    tenant_id    text     NOT NULL,
    rank         smallint NOT NULL CHECK (rank >= 0),
    code         text     NOT NULL,
    display_name text     NOT NULL DEFAULT '',
    min_growth   bigint   NOT NULL CHECK (min_growth >= 0),
    PRIMARY KEY (tenant_id, rank),
    UNIQUE (tenant_id, code),
    FOREIGN KEY (tenant_id) REFERENCES level_policies (tenant_id)
);

-- The level a member holds, when they got it, and the period end up to which downgrades were
-- decided for them. A member without a row holds the base level.
CREATE TABLE member_levels (
    tenant_id        text        NOT NULL,
    member_id        text        NOT NULL,
    code             text        NOT NULL,
    since            timestamptz NOT NULL,
    reviewed_through timestamptz,
    PRIMARY KEY (tenant_id, member_id)
);

-- The tasks feed (kind 1: a level change). Same shape and reading rule as tagging's feed.
CREATE TABLE feed (
    tenant_id   text        NOT NULL,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    kind        smallint    NOT NULL,
    member_id   text        NOT NULL,
    payload     jsonb       NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, txid, seq)
);

-- One member's growth: their earned entries in a window, read from the index alone.
CREATE INDEX ledger_entries_member_earned ON ledger_entries (tenant_id, member_id, create_time)
    INCLUDE (delta) WHERE reason IN (1, 2, 6, 7);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['level_policies', 'level_tiers', 'member_levels', 'feed'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;

-- Upgrades happen at once: after an earning for a task or an order, the member's growth in the
-- policy's window is summed and, when it reaches a higher tier than the one held, the member is
-- raised and the change goes to the feed, in the earning's transaction. Downgrades are never made
-- here (EvaluateLevels makes them at period ends). Called with the member's account locked, so
-- earnings of one member raise their level one at a time.
CREATE FUNCTION raise_level(p_tenant text, p_member text) RETURNS void
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
    SELECT coalesce(sum(delta), 0) INTO growth FROM ledger_entries
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

-- add_earning as in migration 0003, now raising the member's level after an earning for a task
-- or an order (operator corrections are not growth).
CREATE OR REPLACE FUNCTION add_earning(
    p_tenant text, p_member text, p_delta bigint, p_reason smallint, p_reference text, p_operator text,
    p_note text, p_request_id text, p_hash text, p_available timestamptz, p_expire timestamptz,
    p_order text
) RETURNS SETOF ledger_entries
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = tasks, pg_catalog
AS $$
DECLARE
    e ledger_entries;
BEGIN
    PERFORM set_config('role', 'memberops_app', true), set_config('memberops.tenant_id', p_tenant, true);
    INSERT INTO accounts (tenant_id, member_id) VALUES (p_tenant, p_member)
    ON CONFLICT (tenant_id, member_id) DO UPDATE SET member_id = excluded.member_id;
    IF p_request_id <> '' THEN
        SELECT * INTO e FROM ledger_entries
        WHERE tenant_id = p_tenant AND request_id = p_request_id AND request_id <> '';
        IF FOUND THEN
            RETURN NEXT e;
            RETURN;
        END IF;
    END IF;
    IF p_order IS NOT NULL AND EXISTS (
        SELECT 1 FROM ledger_entries
        WHERE tenant_id = p_tenant AND member_id = p_member AND reference = p_order AND reason = 6
    ) THEN
        RETURN;
    END IF;
    INSERT INTO ledger_entries (tenant_id, member_id, delta, reason, reference, operator, note, request_id,
                                content_hash, available_time, expire_time)
    VALUES (p_tenant, p_member, p_delta, p_reason, p_reference, p_operator, p_note, p_request_id, p_hash,
            p_available, p_expire)
    RETURNING * INTO e;
    INSERT INTO lots (tenant_id, member_id, entry_id, order_id, amount, remaining, available_time, expire_time)
    VALUES (p_tenant, p_member, e.entry_id, p_order, p_delta, p_delta, p_available, p_expire);
    IF p_reason IN (1, 2) THEN
        PERFORM raise_level(p_tenant, p_member);
    END IF;
    RETURN NEXT e;
END
$$;
