-- The rewards catalog and redemptions. A redemption, its spend entry and the unit of stock it takes
-- are written in one transaction; the stock can never go below zero.

CREATE TABLE rewards (
    tenant_id     text        NOT NULL,
    reward_id     text        NOT NULL,
    -- memberops.tasks.v1.RewardKind: 1 coupon, 2 virtual item, 3 physical, 4 lottery.
    kind          smallint    NOT NULL CHECK (kind BETWEEN 1 AND 4),
    display_name  text        NOT NULL DEFAULT '',
    price         bigint      NOT NULL CHECK (price > 0),
    initial_stock bigint,
    -- NULL: unlimited.
    stock         bigint      CHECK (stock >= 0),
    win_odds_bp   integer     NOT NULL DEFAULT 0 CHECK (win_odds_bp BETWEEN 0 AND 10000),
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, reward_id)
);

CREATE TABLE redemptions (
    tenant_id     text        NOT NULL,
    redemption_id bigint      GENERATED ALWAYS AS IDENTITY,
    request_id    text        NOT NULL,
    member_id     text        NOT NULL,
    reward_id     text        NOT NULL,
    points        bigint      NOT NULL,
    -- memberops.tasks.v1.RedemptionOutcome: 1 fulfilled, 2 lost (a lottery draw that did not win).
    outcome       smallint    NOT NULL CHECK (outcome IN (1, 2)),
    entry_id      bigint      NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, redemption_id),
    UNIQUE (tenant_id, request_id),
    FOREIGN KEY (tenant_id, reward_id) REFERENCES rewards (tenant_id, reward_id),
    FOREIGN KEY (tenant_id, entry_id) REFERENCES ledger_entries (tenant_id, entry_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rewards', 'redemptions'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''memberops.tenant_id'')) '
            'WITH CHECK (tenant_id = current_setting(''memberops.tenant_id''))', t);
    END LOOP;
END $$;
