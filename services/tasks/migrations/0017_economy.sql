-- Economy rules (issue 23): the order earning rule, level benefits and their grants, and the
-- invite clawback's qualifying order.

-- The rule for points on orders, one row per version (the highest is current; none: off).
-- `enabled_since` is when the current run of enabled versions began: orders paid before it earn
-- nothing (facts at their own time, as a purchase task counts orders paid while it is valid).
CREATE TABLE order_earning_rules (
    tenant_id             text        NOT NULL,
    version               integer     NOT NULL CHECK (version >= 1),
    enabled               boolean     NOT NULL,
    minor_units_per_point bigint      NOT NULL CHECK (minor_units_per_point BETWEEN 1 AND 1000000),
    expiry_policy         smallint    NOT NULL CHECK (expiry_policy BETWEEN 1 AND 4),
    expiry_days           integer     NOT NULL CHECK (expiry_days BETWEEN 0 AND 3650),
    return_window_days    integer     NOT NULL CHECK (return_window_days BETWEEN 0 AND 365),
    enabled_since         timestamptz,
    content_hash          text        NOT NULL,
    update_time           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version),
    CHECK (enabled = (enabled_since IS NOT NULL))
);

-- A level's benefits, stored with its tier (0: multiplier 100; '': no coupon).
ALTER TABLE level_tiers
    ADD COLUMN points_multiplier_percent integer NOT NULL DEFAULT 0
        CHECK (points_multiplier_percent = 0 OR points_multiplier_percent BETWEEN 100 AND 1000),
    ADD COLUMN monthly_coupon_template text NOT NULL DEFAULT '',
    ADD COLUMN birthday_coupon_template text NOT NULL DEFAULT '';

-- Level benefits granted: one row per member, benefit and period ('2026-12' for a monthly coupon,
-- '2026' for a birthday coupon), written in the transaction that issues the coupon, before it, so
-- a second run (or a concurrent one) grants nothing more. A refused issue (no stock) leaves no
-- row: the next run tries again.
CREATE TABLE level_benefit_grants (
    tenant_id   text        NOT NULL,
    member_id   text        NOT NULL,
    benefit     text        NOT NULL CHECK (benefit IN ('monthly', 'birthday')),
    period      text        NOT NULL,
    template_id text        NOT NULL,
    coupon_code text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, member_id, benefit, period)
);

-- The member's first live order (the one a FIRST_ORDER invite qualifies on) and when it was
-- paid, noted with first_order_time; NULL for first orders seen before this migration.
ALTER TABLE member_facts
    ADD COLUMN first_order_id text,
    ADD COLUMN first_order_paid_time timestamptz;

-- Invites taken back (memberops.tasks.v1.InviteState REVERSED = 4).
ALTER TABLE invites DROP CONSTRAINT invites_state_check;
ALTER TABLE invites ADD CONSTRAINT invites_state_check CHECK (state IN (1, 2, 3, 4));

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['order_earning_rules', 'level_benefit_grants'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
